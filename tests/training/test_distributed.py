"""DDP under torchrun (gloo, CPU): ranks stay identical and only rank 0 tracks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hdkd.models import build_model
from hdkd.tracking import use_store
from tests.helpers import toy_images
from tests.repo import REPO, run

TINY_TRAINING = {"epochs": 2, "batch_size": 16, "lr": 0.002, "warmup_epochs": 0}


def write_split(path: Path, n: int, seed: int) -> None:
    images, labels = toy_images(n, 3, 32, seed)
    ids = np.array([f"{path.stem}/{i}.png" for i in range(n)])
    np.savez(path, images=images, labels=labels, classes=np.array(["a", "b", "c"]), ids=ids)


def write_params(path: Path, nproc: int) -> None:
    params = {
        "seed": 3,
        "model": {"preset": "tiny"},
        "data": {"image_size": 32},
        "student": TINY_TRAINING,
        "distributed": {"nproc": nproc},
        "mlflow": {"tracking_uri": f"sqlite:///{path.parent / 'mlflow.db'}", "experiment": "ddp"},
    }
    path.write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    write_split(tmp_path / "train.npz", 96, 0)
    write_split(tmp_path / "val.npz", 48, 1)
    write_params(tmp_path / "params.yaml", 2)
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(REPO / "tests" / "training" / "ddp_worker.py"),
            str(tmp_path),
        ],
        REPO,
        timeout=600,
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    untrained = build_model("student", "tiny", 3).state_dict()
    assert not torch.equal(rank0["head.weight"], untrained["head.weight"])


@pytest.mark.slow
def test_training_stage_with_nproc_2_relaunches_under_torchrun_and_tracks_once(tmp_path):
    import mlflow

    for split, n in (("balanced/train", 96), ("split/val", 48)):
        (tmp_path / "data" / split).parent.mkdir(parents=True, exist_ok=True)
        write_split(tmp_path / "data" / f"{split}.npz", n, len(split))
    (tmp_path / "data" / "balanced" / "manifest.csv").write_text("path,label\n")
    write_params(tmp_path / "params.yaml", 2)
    result = run(
        [sys.executable, "-m", "pipelines.train_student"], tmp_path, timeout=600, extra_env={"PYTHONPATH": str(REPO)}
    )
    assert (tmp_path / "models" / "student" / "best.pt").is_file(), result.stdout
    use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddp"])
    assert len(runs) == 1 and runs["tags.stage"].tolist() == ["train_student"]
    assert runs["metrics.train_loss"].notna().all()
