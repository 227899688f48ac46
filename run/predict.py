"""Predictions of trained variants for a file of inputs, as a CSV:

    python run/predict.py INPUT --experiment experiments/<name> [--job KEY --variant NAME] [--out FILE]
"""

import sys

from moelab.serve.predict_cli import main

sys.exit(main())
