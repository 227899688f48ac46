"""Setting up a process that trains: which GPU it sees and how many CPU threads torch may use.

Local workers, SLURM tasks and `run/train_models.py` call `prepare_process` before their first job.
torch is imported here, after CUDA_VISIBLE_DEVICES is set: the GPU a process sees is fixed when
torch first initialises CUDA.
"""

from __future__ import annotations

import os


def prepare_process(threads: int | None = None, gpu: int | None = None) -> None:
    """`gpu`: the only GPU this process sees; `threads`: torch's intra-op threads (None: SLURM's
    cpus-per-task when set, else torch's default)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    if threads:
        torch.set_num_threads(threads)
