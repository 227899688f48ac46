"""The `train:` section of an experiment file, as the typed object the trainer receives.

config/ builds the section's schema from these dataclasses; a job's config.json keeps the plain
mapping, which `TrainSettings.from_dict` turns back into this object.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.schema import from_section, param


def check_device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


@dataclass(frozen=True)
class EarlyStoppingSettings:
    patience: int = param(15, "epochs without val improvement before stopping", min=1)
    min_delta: float = param(0.0, "smallest val improvement that counts", min=0.0)


@dataclass(frozen=True)
class DistributedSettings:
    """One job trained by several processes (train/distributed.py). Both fields are in the job's key: P processes
    give the results of one process only up to the rounding of the gradients' sum, and only for models without
    dropout, gate noise, batch norm or balance losses (each rank draws its own noise and computes batch norm and
    balance losses over its own slice of the batch). Where the processes run (GPUs, nodes) is a resource: slurm."""

    processes: int = param(1, "processes training the job with DistributedDataParallel, together taking each batch of "
                           "train.batch_size (one per GPU, or CPU processes with gloo)", min=1, max=4096, since="0.2.0")
    expert_parallel: bool = param(False, "shard each MoE layer's experts over the processes (token exchange with "
                                  "all_to_all_single)", since="0.2.0")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = param(100, "maximum epochs (early stopping may end sooner)", min=1)
    batch_size: int = param(64, min=1)
    eval_batch_size: int = param(1024, min=1)
    optimizer: str = param("adamw", choices=("adam", "adamw", "sgd"))
    lr: float = param(1e-3, min=0.0, exclusive_min=True)
    weight_decay: float = param(1e-4, min=0.0)
    momentum: float = param(0.9, "sgd only", min=0.0, max=1.0)
    schedule: str = param("cosine", choices=("constant", "cosine", "step"))
    warmup_epochs: int = param(0, min=0)
    step_every: int = param(30, "step schedule: epochs between lr x0.1", min=1)
    grad_clip: float | None = param(None, "max gradient norm", min=0.0, exclusive_min=True, nullable=True, kind=float)
    early_stopping: EarlyStoppingSettings = param(EarlyStoppingSettings())
    device: str = param("auto", extra_check=check_device)
    save_weights: bool = param(True, "keep best.pt; the resume checkpoint last.pt is always kept")
    checkpoint: str = param("best", "weights tested: best (the epoch with the best validation metric) or last "
                            "(after the last epoch trained)", since="0.1.0", choices=("best", "last"))
    precision: str = param("fp32", "training's forward pass: fp32, or autocast to bf16 (also on CPUs) or fp16 (with a "
                           "gradient scaler); weights, optimizer and evaluation stay float32", since="0.1.0",
                           choices=("fp32", "bf16", "fp16"))
    compile: bool = param(False, "torch.compile the training step's model (falls back, with a message, where it "
                          "cannot compile)", since="0.1.0")
    deterministic: bool = param(False, "deterministic algorithms only (on GPUs: cuBLAS's fixed workspace); slower",
                                since="0.1.0")
    distributed: DistributedSettings = param(DistributedSettings())

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        return from_section(cls, data)

