"""Tables and plots for experiment folders: python run/create-plots.py [experiments/<name> ...]"""

import sys

from moelab.report.cli import main

sys.exit(main())
