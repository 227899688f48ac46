"""Copy an experiment's finished runs into the trackers researchers already use, after the fact,
from one process on local disk (writing trackers live from many cluster tasks on a shared file
system breaks them): MLflow's SQLite store and W&B offline runs.

    launch_experiment.sh export mlflow|wandb experiments/<name> [--to PATH]

The tree is read only through results/ (results/finished.py). A run's identity is its job key and
variant, so exporting again adds only what finished since.
"""
