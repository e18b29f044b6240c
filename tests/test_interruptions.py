"""Faults: a training stage SIGKILLed mid-epoch resumes to the weights of an uninterrupted run, a
stage killed mid-write leaves nothing a later stage would trust, two `dvc repro` at once are
refused by DVC's lock. Real processes, real signals, real DVC."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hdkd.config import Params, params_from_dict
from hdkd.data.arrays import save_split
from hdkd.training.callbacks import Callback
from hdkd.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hdkd.training.train import train
from tests.helpers import toy_images
from tests.repo import REPO, kill_group, make_repo, run, start_group

CLASSES = ["a", "b", "c"]
EPOCHS = 4
TRAINING = {"epochs": EPOCHS, "batch_size": 16, "lr": 0.002, "warmup_epochs": 0}


@pytest.fixture(autouse=True)
def one_thread():
    # On 2 shared cores a second OpenMP thread spin-waits on a busy core: epochs take 10x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_split(path: Path, n: int, seed: int) -> None:
    images, labels = toy_images(n, len(CLASSES), 32, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split(path, images, labels, CLASSES, np.array([f"{path.stem}/{i}.png" for i in range(n)]))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 300, process: subprocess.Popen | None = None):
    """Poll `condition` until true; fail naming `what` on timeout or if `process` ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process ended ({process.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- a training stage SIGKILLed mid-epoch ----------------------------------------------------------


def stage_dir(root: Path) -> Path:
    """What `python -m pipelines.train_student` reads, in its own folder with its own MLflow store."""
    # Epochs long enough (~1 s of CPU) that a kill aimed at half an epoch lands inside it on a loaded machine.
    write_split(root / "data" / "balanced" / "train.npz", 1536, 0)
    write_split(root / "data" / "split" / "val.npz", 96, 1)
    (root / "data" / "balanced" / "manifest.csv").write_text("path,label\n")
    params = {
        "seed": 3,
        "model": {"preset": "tiny"},
        "data": {"image_size": 32, "num_workers": 0},
        "student": TRAINING,
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "faults"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def start_stage(root: Path) -> subprocess.Popen:
    # One thread each: the two runs compared must compute identically, and they share 2 cores.
    return start_group(
        [sys.executable, "-m", "pipelines.train_student"], root, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"
    )


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used: unlike wall time, it does not stretch when other work takes the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def saved_epoch(path: Path) -> int:
    """Epoch of a `last.pt`, -1 while there is none (written atomically: never read half-written)."""
    return load_checkpoint(path)["epoch"] if path.is_file() else -1


def learning_curve(root: Path, column: str = "epoch_seconds") -> list[float]:
    """One column of the stage's learning curve (the CSV writes floats exactly, by their repr)."""
    with open(root / "reports" / "plots" / "learning" / "student.csv") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), f"{a.name}: {key} differs"


@pytest.mark.slow
def test_stage_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    from mlflow.tracking import MlflowClient

    full, cut = stage_dir(tmp_path / "full"), stage_dir(tmp_path / "cut")
    uninterrupted, victim = start_stage(full), start_stage(cut)
    last = cut / "models" / ".unfinished" / "student" / "last.pt"  # outside the DVC output, which DVC deletes
    wait_for(lambda: saved_epoch(last) >= 0, "epoch 1 to be saved", process=victim)
    began = cpu_seconds(victim.pid)
    wait_for(lambda: saved_epoch(last) >= 1, "epoch 2 to be saved", process=victim)
    reached, saved_at = saved_epoch(last), cpu_seconds(victim.pid)
    # The next epoch started right after that save: kill it half-way, by the CPU time an epoch takes.
    halfway = saved_at + (saved_at - began) / 2
    wait_for(lambda: cpu_seconds(victim.pid) >= halfway, "half an epoch more", process=victim)
    kill_group(victim)
    assert saved_epoch(last) == reached < EPOCHS - 1, "the kill did not land inside an unfinished epoch"
    assert not (cut / "reports" / "stages" / "student.json").exists()
    saved_history = load_checkpoint(last)["history"]

    resumed = finish(start_stage(cut))
    finish(uninterrupted)
    assert f"student: resuming at epoch {reached + 2}/{EPOCHS} from models/.unfinished/student/last.pt" in resumed
    curves = [learning_curve(root) for root in (full, cut)]
    assert curves[1][: reached + 1] == [row["epoch_seconds"] for row in saved_history]  # restored, not retrained
    assert_same_weights(full / "models" / "student" / "best.pt", cut / "models" / "student" / "best.pt")
    assert not (cut / "models" / ".unfinished").joinpath("student").exists()  # finished: nothing left to resume
    metrics = [json.loads((root / "reports" / "stages" / "student.json").read_text()) for root in (full, cut)]
    assert metrics[0] == metrics[1] and metrics[1]["epochs"] == EPOCHS

    # The resumed stage's MLflow run holds the whole learning curve, restored epochs included.
    client = MlflowClient(f"sqlite:///{cut / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults").experiment_id
    finished = client.search_runs([experiment], "attributes.status = 'FINISHED'")
    assert len(finished) == 1
    curve = client.get_metric_history(finished[0].info.run_id, "val_macro_f1")
    history = learning_curve(full, "val_macro_f1")
    assert sorted((m.step, m.value) for m in curve) == list(enumerate(history))


# -- which last.pt a stage rerun continues ---------------------------------------------------------


class StopAfter(Callback):
    """Stands in for a kill after the checkpoint of `epoch` (the real kill is tested above)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def small_params() -> Params:
    training = {"epochs": 3, "batch_size": 16, "lr": 0.003, "sched": "none"}
    return params_from_dict(
        {"seed": 5, "data": {"num_workers": 0}, "student": training, "distill": training, "teacher": training}
    )


@pytest.fixture
def splits(tmp_path):
    write_split(tmp_path / "train.npz", 48, 0)
    write_split(tmp_path / "other_train.npz", 48, 2)
    write_split(tmp_path / "val.npz", 24, 1)
    return tmp_path


def interrupted(params: Params, kind: str, splits: Path, out: Path, teacher: Path | None = None) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(params, kind, splits / "train.npz", splits / "val.npz", out, teacher, callbacks=[StopAfter(0)])
    assert load_checkpoint(out / "last.pt")["epoch"] == 0


def test_stage_rerun_continues_only_an_unfinished_run_of_the_same_job(splits, capsys):
    params, cut = small_params(), splits / "cut"
    interrupted(params, "student", splits, cut)
    for name in ("other_data", "no_best"):
        shutil.copytree(cut, splits / name)
    (splits / "no_best" / "best.pt").unlink()
    capsys.readouterr()

    def rerun(out: Path, data: str = "train.npz") -> tuple[list[dict[str, float]], str]:
        result = train(params, "student", splits / data, splits / "val.npz", out, resume="unfinished", progress=False)
        assert len(result.history) == params.student.epochs
        return result.history, capsys.readouterr().out

    _, said = rerun(splits / "other_data", "other_train.npz")
    assert f"student: {splits / 'other_data' / 'last.pt'} is from other data; training from scratch" in said
    assert "resuming" not in said
    _, said = rerun(splits / "no_best")
    assert "has no best.pt beside it; training from scratch" in said

    restored = load_checkpoint(cut / "last.pt")["history"]
    history, said = rerun(cut)
    assert f"resuming at epoch 2/3 from {cut / 'last.pt'}" in said
    assert history[0] == restored[0]  # restored, not retrained (epoch_seconds would differ)
    assert load_checkpoint(cut / "best.pt")["meta"]["epoch"] == max(
        range(len(history)), key=lambda e: (history[e]["val_macro_f1"], -e)
    )

    # Finished: DVC reruns a finished stage only because something changed, so it trains afresh.
    again, said = rerun(cut)
    assert f"{cut / 'last.pt'} is from a finished run; training from scratch" in said
    assert again[0]["epoch_seconds"] != history[0]["epoch_seconds"]

    # `hdkd train --resume` is an explicit request: a mismatch fails instead.
    with pytest.raises(CheckpointError, match="is from other data; delete it or run without resume"):
        train(params, "student", splits / "other_train.npz", splits / "val.npz", cut, resume=True, progress=False)


def test_distillation_rerun_does_not_continue_a_run_from_another_teacher(splits, capsys):
    params = small_params()
    train(params, "teacher", splits / "train.npz", splits / "val.npz", splits / "teacher", progress=False)
    teacher = splits / "teacher" / "best.pt"
    interrupted(params, "distilled", splits, splits / "hdkd", teacher)
    state = load_checkpoint(teacher)
    state["model"]["head.bias"] += 0.01  # a retrained teacher: other bytes, same shapes
    save_checkpoint(teacher, state)
    capsys.readouterr()
    train(
        params,
        "distilled",
        splits / "train.npz",
        splits / "val.npz",
        splits / "hdkd",
        teacher,
        resume="unfinished",
        progress=False,
    )
    assert "last.pt was distilled from another teacher; training from scratch" in capsys.readouterr().out


# -- a stage killed mid-write; two `dvc repro` at once ---------------------------------------------

# Synthetic images: ingest writes them for seconds, long enough to kill it mid-write (the kill comes
# as soon as the first image is written) or to start a second repro while it runs.
INGEST = 2000
SLOW_INGEST = 6000


def staged_temps(repo: Path) -> list[Path]:
    """atomic_dir's temporary folders for data/raw (`data/.raw.*.tmp`), holding the stage's PNGs."""
    return sorted((repo / "data").glob(".raw.*.tmp"))


def writing(repo: Path, old: Sequence[Path] = ()) -> bool:
    """True once the ingest stage has written images into a temporary folder (not one of `old`)."""
    return any(any((temp / "images").glob("*/*.png")) for temp in staged_temps(repo) if temp not in old)


def set_param(repo: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.setdefault(section, {})[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def manifest_rows(repo: Path) -> int:
    return len((repo / "data" / "raw" / "manifest.csv").read_text().splitlines()) - 1


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(repo: Path) -> set[str]:
    """What is in data/ besides the output, the DVC-written .gitignore and atomic_dir's temporary folders."""
    return {p.name for p in (repo / "data").iterdir()} - {"raw", ".gitignore"} - {p.name for p in staged_temps(repo)}


@pytest.mark.slow
def test_stage_killed_mid_write_leaves_no_output_a_later_stage_would_trust(tmp_path):
    repo = make_repo(tmp_path, {"data": {"synthetic_images": 300}})
    run(["dvc", "repro", "ingest"], repo)
    before = tree(repo / "data" / "raw")
    set_param(repo, "data", "synthetic_images", INGEST)

    # The stage's own process killed mid-write: atomic_dir leaves the previous complete data/raw.
    stage = start_group([sys.executable, "-m", "pipelines.ingest"], repo)
    wait_for(lambda: writing(repo), "ingest to write images", process=stage)
    kill_group(stage)
    assert tree(repo / "data" / "raw") == before
    assert leftovers(repo) == set() and staged_temps(repo)  # the half-written images sit in a dot-named temp
    status = run(["dvc", "status", "ingest"], repo).stdout
    assert "ingest:" in status and "params.yaml" in status and "modified" in status, status

    # Under `dvc repro` (no `persist`), DVC deletes data/raw before the command: killed, nothing is left.
    killed = staged_temps(repo)
    repro = start_group(["dvc", "repro", "ingest"], repo)
    wait_for(lambda: writing(repo, killed), "the rerun to write images", process=repro)
    kill_group(repro)
    assert not (repo / "data" / "raw").exists() and leftovers(repo) == set()
    status = run(["dvc", "status", "ingest"], repo).stdout
    assert "deleted:" in status and "data/raw" in status, status

    run(["dvc", "repro", "ingest"], repo)
    assert manifest_rows(repo) == INGEST
    assert "up to date" in run(["dvc", "status", "ingest"], repo).stdout


@pytest.mark.slow
def test_second_dvc_repro_stops_on_dvc_locks_and_nothing_is_corrupted(tmp_path):
    from dvc.repo import Repo

    repo = make_repo(tmp_path, {"data": {"synthetic_images": SLOW_INGEST}})
    first = start_group(["dvc", "repro", "ingest"], repo)
    # While a stage command runs, DVC releases the repository lock (.dvc/tmp/lock) and guards the
    # stage's deps and outs with its read/write lock (.dvc/tmp/rwlock) instead.
    wait_for(lambda: bool(staged_temps(repo)), "the first repro to run ingest", process=first)
    second = run(["dvc", "repro", "ingest"], repo, check=False, timeout=300)
    assert first.poll() is None, "the first repro ended before the second one asked for the lock"
    assert second.returncode != 0
    blocker = rf"data/raw' is busy, it is being blocked by:\n  \(PID {first.pid}\): \S*dvc repro ingest\n"
    assert re.search(blocker, second.stderr), second.stderr
    assert "Running stage" not in second.stdout

    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert manifest_rows(repo) == SLOW_INGEST
    assert "up to date" in run(["dvc", "status", "ingest"], repo).stdout

    # Before and after its commands (collecting the graph, committing outputs) a DVC process holds the
    # repository lock: a repro started then stops with DVC's "Unable to acquire lock".
    set_param(repo, "data", "synthetic_images", SLOW_INGEST + 1)  # so that the repro has a stage to run
    with Repo(str(repo)) as dvc_repo, dvc_repo.lock:
        blocked = run(["dvc", "repro", "ingest"], repo, check=False, timeout=300)
    assert blocked.returncode != 0
    assert "Unable to acquire lock. Most likely another DVC process is running" in blocked.stderr
    assert "Running stage" not in blocked.stdout
    assert manifest_rows(repo) == SLOW_INGEST
    set_param(repo, "data", "synthetic_images", SLOW_INGEST)
    again = run(["dvc", "repro", "ingest"], repo).stdout
    assert "Stage 'ingest' didn't change, skipping" in again and "Running stage" not in again
