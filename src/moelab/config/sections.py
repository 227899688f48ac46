"""The experiment file's sections and their fields (everything but `variants` and `grid`).

`data` and `train` come from the typed settings their consumers read (data/settings.py,
train/settings.py); `local`, `slurm` and `report` are read by launch and report.
"""

from __future__ import annotations

from moelab.data.settings import DataSettings
from moelab.schema import PATH_SAFE, Field, Section, section_from_dataclass
from moelab.train.settings import TrainSettings

DATA: Section = section_from_dataclass(DataSettings)
TRAIN: Section = section_from_dataclass(TrainSettings)

LOCAL: Section = {
    "workers": Field(int, None, min=1, nullable=True,
                     help="worker processes (null: jobs_per_gpu per GPU, else one single-thread worker per core)"),
    "jobs_per_gpu": Field(int, 1, min=1, max=64, help="jobs trained at once on each GPU"),
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
    "jobs_per_task": Field(int, None, min=1, nullable=True,
                           help="jobs one array task pulls (null: as many as make at most array_parallelism tasks)"),
    "jobs_per_gpu": Field(int, 1, min=1, max=64, help="jobs a task trains at once on each of its GPUs"),
    "max_submit_jobs": Field(int, None, min=1, nullable=True,
                             help="jobs you may have queued, where accounting cannot say (MaxSubmitJobs)"),
    "additional_parameters": Field(dict, {}, help="extra sbatch parameters"),
}

REPORT: Section = {
    "live_plot_every": Field(int, 10, min=0, help="a running variant redraws its curves.png every N epochs (0: never)"),
}

TOP: Section = {
    "name": Field(str, pattern=PATH_SAFE, help="experiment name: the folder under experiments/"),
    "description": Field(str, ""),
    "seed": Field(int, 0, min=0),
    "data": DATA,
    "train": TRAIN,
    # variants, grid and search have their own checks (experiment.py, grid.py, search.py)
    "variants": Field(list, None, nullable=True),
    "grid": Field(dict, {}),
    "search": Field(dict, None, nullable=True, help="a hyperparameter search (config/search.py)"),
    "local": LOCAL,
    "slurm": SLURM,
    "report": REPORT,
}
