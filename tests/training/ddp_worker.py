"""Run under torchrun by tests/training/test_distributed.py: train on toy splits, save this rank's weights."""

import sys
from pathlib import Path

import torch

from hdkd.config import load_params
from hdkd.training.distributed import init_world
from hdkd.training.train import train

if __name__ == "__main__":
    root = Path(sys.argv[1])
    world = init_world()
    params = load_params(root / "params.yaml")
    result = train(params, "student", root / "train.npz", root / "val.npz", root / "out", progress=False, world=world)
    torch.save(result.net.state_dict(), root / f"rank{world.rank}.pt")
