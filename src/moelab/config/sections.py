"""The experiment file's sections and their fields (everything but `variants` and `grid`).

`data` and `train` come from the typed settings their consumers read (data/settings.py,
train/settings.py); `local`, `slurm` and `report` are read by launch and report.
"""

from __future__ import annotations

from moelab.config.baseline import check_match_kinds
from moelab.data.settings import DataSettings
from moelab.schema import PATH_SAFE, Field, Section, section_from_dataclass
from moelab.train.settings import TrainSettings

DATA: Section = section_from_dataclass(DataSettings)
TRAIN: Section = section_from_dataclass(TrainSettings)

LOCAL: Section = {
    "workers": Field(int, None, min=1, nullable=True, help="worker processes (null: one per GPU, else one)"),
}

SLURM: Section = {
    "partition": Field(str, None, nullable=True),
    "account": Field(str, None, nullable=True),
    "qos": Field(str, None, nullable=True),
    "gpus_per_node": Field(int, 0, min=0),
    "cpus_per_task": Field(int, 1, min=1),
    "mem_gb": Field(float, 4.0, min=0.0, exclusive_min=True),
    "timeout_min": Field(int, 60, min=1),
    "constraint": Field(str, None, nullable=True),
    "exclude": Field(str, None, nullable=True),
    "array_parallelism": Field(int, 64, min=1),
    "max_num_timeout": Field(int, 3, min=0),
    "slurm_signal_delay_s": Field(int, 90, min=1),
    "setup": Field(list, [], item_kind=str, help="shell lines run before the job, e.g. module load"),
    "python": Field(str, None, nullable=True, help="python executable on the nodes"),
    "max_array_size": Field(int, None, min=1, nullable=True, help="tasks per array (null: the cluster's MaxArraySize)"),
    "additional_parameters": Field(dict, {}, help="extra sbatch parameters"),
}

REPORT: Section = {
    "live_plot_every": Field(int, 10, min=0, help="a running variant redraws its curves.png every N epochs (0: never)"),
}

BASELINE: Section = {
    "variant": Field(str, None, nullable=True, help="the dense variant every other is compared with (null: the first "
                                                    "mlp or cnn variant)"),
    "match": Field(list, [], item_kind=str, extra_check=check_match_kinds,
                   help="add dense MLPs of the size of each MoE variant: active and/or total parameters"),
}

TOP: Section = {
    "name": Field(str, pattern=PATH_SAFE, help="experiment name: the folder under experiments/"),
    "description": Field(str, ""),
    "seed": Field(int, 0, min=0),
    "data": DATA,
    "train": TRAIN,
    # variants and grid have their own checks (variants.py, grid.py)
    "variants": Field(list, None, nullable=True),
    "grid": Field(dict, {}),
    "baseline": BASELINE,
    "local": LOCAL,
    "slurm": SLURM,
    "report": REPORT,
}
