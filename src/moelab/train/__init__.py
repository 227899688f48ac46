"""One job: its variants trained on the same data, checkpoints and resume, evaluation and predict."""
