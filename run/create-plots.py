"""Tables and plots for experiment folders: python run/create-plots.py [experiments/<name> ...]
(python run/create-plots.py A B --compare: two experiments side by side)
(a search's study files are refreshed first: trials, importances, best.yaml)"""

import sys
from pathlib import Path

from moelab.report.cli import main
from moelab.results.tree import ExperimentTree


def refresh_study(folder: Path) -> None:
    if ExperimentTree(folder).study.journal.is_file():
        from moelab.search.export import refresh_study_files  # optuna: only for a search

        refresh_study_files(folder)


sys.exit(main(prepare=refresh_study))
