"""Run one job of an experiment, the entry that every launcher uses.

    python run/train_models.py experiments/<name>/jobs/<key> [--force]           # a job folder
    python run/train_models.py EXPERIMENT_FILE --index N [key=value ...] [--force] # the N-th job of the grid

The second form is what slurm/run_training.slurm runs in each array task.
"""

import sys

from moelab.launch.train_one import main

sys.exit(main())
