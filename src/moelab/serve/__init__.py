"""The dashboard and prediction web app (`serve`) and the `predict` command.

    bash run/launch_experiment.sh serve [experiments/<name> ...] [--port N] [--host H]
    python run/predict.py INPUT --experiment experiments/<name> [--job KEY --variant NAME] --out predictions.csv

Both read the experiments tree only (the report's files, job states, weights); nothing is written
into it. Raw inputs and how they are preprocessed: moelab.data.preprocessing.
"""
