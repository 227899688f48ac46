"""The experiment file's sections and their fields (everything but `variants` and `grid`).

`data` and `train` come from the typed settings their consumers read (data/settings.py,
train/settings.py); `local`, `slurm` and `report` are read by launch and report.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from moelab.config.baseline import check_match_kinds
from moelab.data.settings import DataSettings
from moelab.schema import PATH_SAFE, Field, Section, section_from_dataclass, shown
from moelab.train.settings import TrainSettings

# Tracked files of experiments/, next to the experiment output folders (experiments/<name>/): an
# experiment of one of these names would write its outputs among them. Compared case-insensitively
# (macOS and Windows file systems are).
RESERVED_EXPERIMENT_NAMES = ("configs", "README.md")


def check_experiment_name(name: str) -> str | None:
    if name.casefold() in {reserved.casefold() for reserved in RESERVED_EXPERIMENT_NAMES}:
        return (f"{name!r} is reserved: experiments/<name>/ receives an experiment's outputs, and these names are "
                f"tracked files of experiments/ ({', '.join(RESERVED_EXPERIMENT_NAMES)}); choose another name")
    return None


# Values written into the sbatch script by submitit, one `#SBATCH --key=value` line each (only
# `setup` is shell by design). A line break there would start a line of its own: another directive,
# or a shell command.
SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_sbatch_text(value: str) -> str | None:
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return (f"must be a single line without control characters, got {shown(value)} (it holds {bad!r}); it is written "
                "into the sbatch script, where a line break would start a line of its own")
    return None


def check_sbatch_parameters(parameters: dict) -> str | None:
    """Extra sbatch options: option names as sbatch spells them, values that fit on their line."""
    for key, value in parameters.items():
        if not isinstance(key, str) or not SBATCH_OPTION.fullmatch(key):
            return (f"option {shown(key)} is not an sbatch option name: letters, digits, '-' and '_', starting with a "
                    "letter, e.g. mail-type")
        problem = _sbatch_value_problem(value)
        if problem:
            return f"{key}: {problem}"
    return None


def _sbatch_value_problem(value: Any) -> str | None:
    if value is True:
        return None  # written as the bare flag, e.g. --exclusive
    if isinstance(value, bool) or value is None:
        return f"got {value!r}: an option is either given (true, or a value) or left out; remove it to leave it out"
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"got {value!r}, which is not a finite number"
    if isinstance(value, str):
        return check_sbatch_text(value)
    return f"must be a string, a number or true, got {shown(value)}"


DATA: Section = section_from_dataclass(DataSettings)
TRAIN: Section = section_from_dataclass(TrainSettings)

LOCAL: Section = {
    "workers": Field(int, None, min=1, nullable=True,
                     help="worker processes (null: jobs_per_gpu per GPU, else one single-thread worker per core)"),
    "jobs_per_gpu": Field(int, 1, min=1, max=64, help="jobs trained at once on each GPU"),
    "fuse": Field(int, 1, min=1, max=256, since="0.2.0",
                  help="jobs that differ only in their seed a worker trains as one fused model (1: off; mlp and the MoE models on flat inputs)"),
}

SLURM: Section = {
    "partition": Field(str, None, nullable=True, extra_check=check_sbatch_text),
    "account": Field(str, None, nullable=True, extra_check=check_sbatch_text),
    "qos": Field(str, None, nullable=True, extra_check=check_sbatch_text),
    "gpus_per_node": Field(int, 0, min=0),
    "cpus_per_task": Field(int, 1, min=1),
    "mem_gb": Field(float, 4.0, min=0.0, exclusive_min=True),
    "timeout_min": Field(int, 60, min=1),
    "constraint": Field(str, None, nullable=True, extra_check=check_sbatch_text),
    "exclude": Field(str, None, nullable=True, extra_check=check_sbatch_text),
    "array_parallelism": Field(int, 64, min=1),
    "max_num_timeout": Field(int, 3, min=0),
    "slurm_signal_delay_s": Field(int, 90, min=1),
    "setup": Field(list, [], item_kind=str, help="shell lines run before the job, e.g. module load"),
    "python": Field(str, None, nullable=True, extra_check=check_sbatch_text,
                    help="python executable on the nodes (written into the sbatch script's command line)"),
    "max_array_size": Field(int, None, min=1, nullable=True, help="tasks per array (null: the cluster's MaxArraySize)"),
    "jobs_per_task": Field(int, None, min=1, nullable=True,
                           help="jobs one array task pulls (null: as many as make at most array_parallelism tasks)"),
    "jobs_per_gpu": Field(int, 1, min=1, max=64, help="jobs a task trains at once on each of its GPUs"),
    "fuse": Field(int, 1, min=1, max=256, since="0.2.0",
                  help="jobs that differ only in their seed a worker trains as one fused model (1: off; mlp and the MoE models on flat inputs)"),
    "max_submit_jobs": Field(int, None, min=1, nullable=True,
                             help="jobs you may have queued, where accounting cannot say (MaxSubmitJobs)"),
    "nodes": Field(int, 1, min=1, help="nodes a distributed job (train.distributed.processes) spreads its processes "
                                       "over, evenly: one task per process, one GPU per task where gpus_per_node > 0"),
    "additional_parameters": Field(dict, {}, extra_check=check_sbatch_parameters,
                                   help="extra sbatch parameters, e.g. {mail-type: END, exclusive: true}"),
}

REPORT: Section = {
    "live_plot_every": Field(int, 10, min=0, help="a running variant redraws its curves.png every N epochs (0: never)"),
    "tensorboard": Field(bool, True, since="0.1.0",
                         help="each variant writes TensorBoard event files while it trains (when tensorboardX is installed)"),
}

BASELINE: Section = {
    "variant": Field(str, None, nullable=True, help="the dense variant every other is compared with (null: the first "
                                                    "mlp or cnn variant)"),
    "match": Field(list, [], item_kind=str, extra_check=check_match_kinds,
                   help="add dense MLPs of the size of each MoE variant: active and/or total parameters"),
}

TOP: Section = {
    "name": Field(str, pattern=PATH_SAFE, extra_check=check_experiment_name,
                  help="experiment name: the folder under experiments/"),
    "description": Field(str, ""),
    "seed": Field(int, 0, min=0, max=2**32 - 1, help="scikit-learn and numpy take 32-bit seeds"),
    "data": DATA,
    "train": TRAIN,
    # variants, grid and search have their own checks (check_variants in experiment.py, grid.py, search.py)
    "variants": Field(list, None, nullable=True),
    "grid": Field(dict, {}),
    "baseline": BASELINE,
    "search": Field(dict, None, nullable=True, help="a hyperparameter search (config/search.py)"),
    "local": LOCAL,
    "slurm": SLURM,
    "report": REPORT,
}
