"""Setting up a process that trains: which GPU it sees and how many CPU threads torch may use.

Local workers, SLURM tasks and `run/train_models.py` call `prepare_process` before their first job.
torch is imported here, after CUDA_VISIBLE_DEVICES is set: the GPU a process sees is fixed when
torch first initialises CUDA.
"""

from __future__ import annotations

import os


def prepare_process(threads: int | None = None, gpus: tuple[int, ...] = ()) -> None:
    """`gpus`: the only GPUs this process sees (none given: those of its parent), indices into the GPUs
    its parent sees; `threads`: torch's threads (None: SLURM's cpus-per-task when set, else torch's default)."""
    if gpus:
        inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(inherited[gpu] if inherited else str(gpu) for gpu in gpus)
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    if threads:
        # OpenMP and MKL read these when torch loads: no pool larger than this process's share
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
    import torch

    if threads:
        torch.set_num_threads(threads)
