"""Data-parallel training under `torchrun`: gloo on CPU, nccl on CUDA.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op, so the
same code trains on one process or many.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world() -> World:
    """Join the process group torchrun prepared (once per process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
    return world


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def relaunch_with_torchrun(stage: str, nproc: int) -> None:
    """Run the DVC stage `stage` again as `nproc` torchrun workers on this machine; fail as they fail."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"),
        *("-m", "hdkd.stages", stage),
    ]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


SINGLE = World()


def sync_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics: DDP syncs buffers only at the start of a
    forward pass, so after the last step of an epoch each rank holds its own."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def share_cores(loader_workers: int) -> int:
    """Give the training process the cores the DataLoader workers leave free; returns its thread count.

    OpenMP threads spin while they wait, so threads that outnumber the free cores wreck a step: a
    tiny-teacher step took 9.8 s with 2 threads on 2 busy cores and 0.3 s with 1 (see
    benchmarks/epoch_threads.py). An explicit OMP_NUM_THREADS (torchrun sets one per rank) is kept.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - loader_workers))
    return torch.get_num_threads()
