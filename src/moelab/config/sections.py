"""The experiment file's sections and their fields (everything but `variants` and `grid`)."""

from __future__ import annotations

from moelab.schema import PATH_SAFE, Field, Section

DATA: Section = {
    "name": Field(str, "digits", help="dataset name"),
    "root": Field(str, "data", help="folder holding torchvision-format datasets"),
    "val_fraction": Field(float, 0.15, min=0.0, max=0.5, exclusive_min=True, help="share held out for validation"),
    "test_fraction": Field(float, 0.15, min=0.0, max=0.5, exclusive_min=True, help="share held out for test"),
    "max_train_samples": Field(int, None, min=1, nullable=True, help="stratified subsample of the training set"),
    "image": Field(str, None, nullable=True, help="image_fit: image file (default: matplotlib's sample)"),
    "resolution": Field(int, 64, min=8, max=2048, help="image_fit: image side in pixels"),
    "fourier_features": Field(int, 8, min=0, max=32, help="image_fit: sine/cosine bands per coordinate"),
}
# keys every dataset reads; the others belong to the datasets that list them in their spec
DATA_COMMON = ("name", "root", "val_fraction", "max_train_samples")

TRAIN: Section = {
    "epochs": Field(int, 100, min=1, help="maximum epochs (early stopping may end sooner)"),
    "batch_size": Field(int, 64, min=1),
    "eval_batch_size": Field(int, 1024, min=1),
    "optimizer": Field(str, "adamw", choices=("adam", "adamw", "sgd")),
    "lr": Field(float, 1e-3, min=0.0, exclusive_min=True),
    "weight_decay": Field(float, 1e-4, min=0.0),
    "momentum": Field(float, 0.9, min=0.0, max=1.0, help="sgd only"),
    "schedule": Field(str, "cosine", choices=("constant", "cosine", "step")),
    "warmup_epochs": Field(int, 0, min=0),
    "step_every": Field(int, 30, min=1, help="step schedule: epochs between lr x0.1"),
    "grad_clip": Field(float, None, min=0.0, exclusive_min=True, nullable=True, help="max gradient norm"),
    "early_stopping": {
        "patience": Field(int, 15, min=1, help="epochs without val improvement before stopping"),
        "min_delta": Field(float, 0.0, min=0.0, help="smallest val improvement that counts"),
    },
    "device": Field(str, "auto", pattern=None, extra_check=lambda v: None if v in ("auto", "cpu", "cuda") or
                    (v.startswith("cuda:") and v[5:].isdigit()) else "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    "save_weights": Field(bool, True, help="keep best.pt; the resume checkpoint last.pt is always kept"),
}

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

TOP: Section = {
    "name": Field(str, pattern=PATH_SAFE, help="experiment name: the folder under experiments/"),
    "description": Field(str, ""),
    "seed": Field(int, 0, min=0),
    "data": DATA,
    "train": TRAIN,
    # variants and grid have their own checks (variants.py, grid.py)
    "variants": Field(list, None, nullable=True),
    "grid": Field(dict, {}),
    "local": LOCAL,
    "slurm": SLURM,
    "report": REPORT,
}
