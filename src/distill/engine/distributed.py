"""Multi-process launch helpers (`accelerate launch --multi_gpu --num_processes N`, `torchrun --nproc_per_node N`)."""

from __future__ import annotations

import os

import torch


def cpu_only_launch() -> bool:
    """True when a launcher started several processes on a machine with no accelerator.

    Accelerate then needs `cpu=True` to form a gloo process group; without it each process would train alone
    (and all of them would write the same run directory)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return world > 1 and not has_accelerator
