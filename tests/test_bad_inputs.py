"""The bad-input matrix (issue 9, item 3): every input a user can get wrong, built for real in tmp_path.

Each case makes one bad input (broken image files, CSV, npz, params, class sets, checkpoints, an MLflow
server or an Optuna storage that does not answer), calls the public function or the command line, and
checks three things:

(a) the error: an `HDKDError` subclass; on the command line, exit status 1, exactly one `error: ...` line
    (plus indented detail lines) and no traceback;
(b) the message names the offending thing (file, key, class, URL) and says what to do;
(c) nothing half-written: tmp_path holds, after the call, exactly the files and folders it held before,
    byte for byte (no output, no torn output over a previous one, no `.<name>.*.tmp` left by
    hdkd.files.atomic_path/atomic_dir, no file created by a malicious pickle).

Covered elsewhere, not repeated here: ingest of a truncated JPEG, a zero-byte PNG and a text file named .png,
an empty class folder, a missing data.path, a brain_tumor_mri tree without Testing, a HAM CSV without a column
or with a row whose image is absent, a MedMNIST .npz missing some of its arrays (data/test_ingest; here: one
with other key names only, over a previous output); a params file with an unknown key or a wrong preset, a
real source without data.path, a stage entry failing in one line (test_config, data/test_loading); a missing
split cache (data/test_loading); state dicts with missing, extra or mis-shaped keys and resuming with other
settings (training/test_loop); evaluating a checkpoint of another class count or kind
(evaluation/test_evaluate); an unknown backend or a folder with no model for `hdkd predict`
(deploy/test_predict); an Optuna storage in a missing SQLite folder or on a closed PostgreSQL port, a bad
search space (tune/test_studies, at function level; the SQLite case is repeated here through `hdkd tune` to
check that nothing is created).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hdkd.cli import main
from hdkd.config import ConfigError, load_params, params_from_dict, save_overrides
from hdkd.data import DataError
from hdkd.data.arrays import save_split
from hdkd.data.ingest import ingest
from hdkd.errors import HDKDError
from hdkd.layout import Layout
from hdkd.models import build_model
from hdkd.tracking import TrackingError, use_store
from hdkd.training.checkpoint import CheckpointError, load_trained, save_checkpoint
from hdkd.training.train import model_meta, train, train_stage
from tests import data_layouts as layouts
from tests.helpers import toy_images

REPO = Path(__file__).resolve().parents[1]
TINY = params_from_dict({"model": {"preset": "tiny"}, "data": {"num_workers": 0}})  # 32 px images
CLASSES = ["a", "b", "c"]


@dataclass(frozen=True)
class Call:
    """A Python call that must raise `error` (with `env` set for it)."""

    run: Callable[[], object]
    error: type[HDKDError]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """`hdkd ARGS` through its console entry in this process, or `args` as a real process (`process=True`);
    `env` is set for it (MLFLOW_TRACKING_URI wins over params.yaml's mlflow.tracking_uri, as in MLflow)."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: bool = False


# ---------------------------------------------------------------- builders of real bad inputs on disk


def closed_port_url() -> str:
    """An http URL on a local port that was free a moment ago: nothing listens there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def previous_raw(tmp: Path) -> Path:
    """The output of an earlier ingest: a failed run must leave it byte for byte."""
    raw = tmp / "data" / "raw"
    layouts.write_image(raw / "images" / "a" / "old.png", seed=7)
    (raw / "manifest.csv").write_text("path,label\nimages/a/old.png,a\n")
    return raw


def write_params(tmp: Path, text: str = "model:\n  preset: tiny\n") -> Path:
    path = tmp / "params.yaml"
    path.write_text(text)
    return path


def write_splits(tmp: Path, val_classes: list[str] = CLASSES) -> tuple[Path, Path]:
    """Real split caches (toy images, 32 px) as the split and balance stages write them."""
    paths = []
    for name, classes, seed in (("train", CLASSES, 0), ("val", val_classes, 1)):
        images, labels = toy_images(2 * len(classes), len(classes), 32, seed=seed)
        path = tmp / f"{name}.npz"
        save_split(path, images, labels, classes, np.array([f"{name}/{i}" for i in range(len(labels))]))
        paths.append(path)
    return paths[0], paths[1]


def write_checkpoint(path: Path, kind: str, classes: list[str] = CLASSES, weights_of: str | None = None) -> Path:
    """A checkpoint as the trainer saves it; `weights_of` puts another kind's weights under this meta."""
    model = build_model(weights_of or kind, "tiny", num_classes=len(classes))
    save_checkpoint(path, {"model": model.state_dict(), "meta": model_meta(TINY, kind, classes)})
    return path


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def image_file(tmp: Path) -> Path:
    path = tmp / "lesion.png"
    Image.fromarray(toy_images(1, 3, 32)[0][0]).save(path)
    return path


# ---------------------------------------------------------------- the cases: one builder each


def ingest_stage_truncated_png(tmp: Path) -> Command:
    src = layouts.imagefolder(tmp / "src", {"a": 3, "b": 3})
    cut = layouts.write_image(src / "b" / "cut.png", seed=99, size=64)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    write_params(tmp, f"data:\n  source: imagefolder\n  path: {src}\n")
    previous_raw(tmp)
    return Command([sys.executable, "-m", "pipelines.ingest"], process=True)


def ingest_zero_byte_jpeg(tmp: Path) -> Call:
    src = layouts.imagefolder(tmp / "src", {"a": 3, "b": 3})
    (src / "a" / "zero.jpg").write_bytes(b"")
    raw = previous_raw(tmp)
    return Call(lambda: ingest(layouts.params("imagefolder", src), raw), DataError)


def imagefolder_one_class(tmp: Path) -> Call:
    src = layouts.imagefolder(tmp / "src", {"only": 4})
    return Call(lambda: ingest(layouts.params("imagefolder", src), tmp / "raw"), DataError)


def ham_csv_unknown_label(tmp: Path) -> Call:
    root = layouts.ham10000(tmp / "ham", lesions_per_class=1)
    csv = root / "HAM10000_metadata.csv"
    meta = pd.read_csv(csv)
    meta.loc[2, "dx"] = "melanomma"
    meta.to_csv(csv, index=False)
    raw = previous_raw(tmp)
    return Call(lambda: ingest(layouts.params("ham10000", root), raw), DataError)


def ham_csv_empty(tmp: Path) -> Call:
    root = layouts.ham10000(tmp / "ham", lesions_per_class=1)
    (root / "HAM10000_metadata.csv").write_bytes(b"")
    return Call(lambda: ingest(layouts.params("ham10000", root), tmp / "raw"), DataError)


def medmnist_other_keys(tmp: Path) -> Call:
    path = tmp / "mnist.npz"
    np.savez(path, x_train=np.zeros((4, 28, 28), np.uint8), y_train=np.zeros(4, np.int64))
    raw = previous_raw(tmp)
    return Call(lambda: ingest(layouts.params("medmnist", path), raw), DataError)


def medmnist_object_arrays(tmp: Path) -> Call:
    path = layouts.medmnist(tmp / "mnist.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    images = np.empty(3, dtype=object)  # filled one by one: numpy would otherwise try to stack them
    images[0], images[1], images[2] = arrays["train_images"][0], arrays["train_images"][1], "not an image"
    np.savez(path, **{**arrays, "train_images": images})  # np.savez pickles object arrays
    return Call(lambda: ingest(layouts.params("medmnist", path), tmp / "raw"), DataError)


def medmnist_text_file(tmp: Path) -> Call:
    path = tmp / "mnist.npz"
    path.write_text("train_images,train_labels\n")
    return Call(lambda: ingest(layouts.params("medmnist", path), tmp / "raw"), DataError)


def train_cli_npz_missing_key(tmp: Path) -> Command:
    train_npz, val_npz = write_splits(tmp)
    with np.load(train_npz) as npz:
        arrays = {key: npz[key] for key in npz.files if key != "classes"}
    np.savez(train_npz, **arrays)
    write_params(tmp)
    args = ["train", "--kind", "student", "--train-data", str(train_npz), "--val-data", str(val_npz)]
    return Command([*args, "--out", str(tmp / "runs" / "student")])


def split_npz_object_array(tmp: Path) -> Call:
    train_npz, val_npz = write_splits(tmp)
    with np.load(val_npz) as npz:
        arrays = dict(npz)
    arrays["classes"] = np.array(["a", "b", 3], dtype=object)
    np.savez(val_npz, **arrays)
    return Call(lambda: train(TINY, "student", train_npz, val_npz, tmp / "runs"), DataError)


def split_npz_random_bytes(tmp: Path) -> Call:
    train_npz, val_npz = write_splits(tmp)
    train_npz.write_bytes(np.random.default_rng(0).bytes(4096))
    return Call(lambda: train(TINY, "student", train_npz, val_npz, tmp / "runs"), DataError)


def train_val_class_sets_differ(tmp: Path) -> Call:
    train_npz, val_npz = write_splits(tmp, val_classes=["a", "b"])
    return Call(lambda: train(TINY, "student", train_npz, val_npz, tmp / "runs"), DataError)


def params_yaml_syntax_error(tmp: Path) -> Command:
    write_params(tmp, "teacher:\n  epochs: [3\n  lr: 0.001\n")
    return Command(["train", "--kind", "teacher"])


def params_not_utf8(tmp: Path) -> Call:
    path = write_params(tmp)
    path.write_bytes("model:\n  preset: tiny  # \u00e9\n".encode("latin-1"))
    return Call(lambda: load_params(path), ConfigError)


def params_unknown_key_in_set(tmp: Path) -> Command:
    write_params(tmp)
    return Command(["train", "--kind", "distilled", "--set", "distill.alpah=0.3"])


def params_wrong_enum_override(tmp: Path) -> Call:
    path = write_params(tmp, "# knobs\nteacher:\n  opt: adam  # the paper's optimiser\n")
    return Call(lambda: save_overrides(path, {"teacher.opt": "adamx"}), ConfigError)


def params_negative_epochs(tmp: Path) -> Command:
    write_params(tmp)
    return Command(["train", "--kind", "student", "--set", "student.epochs=-1"])


def params_image_size_unfit(tmp: Path) -> Command:
    train_npz, val_npz = write_splits(tmp)
    write_params(tmp)
    args = ["train", "--kind", "student", "--train-data", str(train_npz), "--val-data", str(val_npz)]
    return Command([*args, "--set", "data.image_size=40"])


def train_unknown_kind(tmp: Path) -> Command:
    train_npz, val_npz = write_splits(tmp)
    write_params(tmp)
    return Command(["train", "--kind", "techer", "--train-data", str(train_npz), "--val-data", str(val_npz)])


def distill_without_teacher(tmp: Path) -> Command:
    train_npz, val_npz = write_splits(tmp)
    write_params(tmp)
    return Command(["train", "--kind", "distilled", "--train-data", str(train_npz), "--val-data", str(val_npz)])


def distill_from_student_checkpoint(tmp: Path) -> Command:
    train_npz, val_npz = write_splits(tmp)
    write_params(tmp)
    student = write_checkpoint(tmp / "runs[v2]" / "best.pt", "student")  # brackets: not Rich markup
    args = ["train", "--kind", "distilled", "--train-data", str(train_npz), "--val-data", str(val_npz)]
    return Command([*args, "--teacher", str(student), "--out", str(tmp / "runs" / "hdkd")])


def distill_teacher_other_class_count(tmp: Path) -> Call:
    train_npz, val_npz = write_splits(tmp)
    teacher = write_checkpoint(tmp / "teacher" / "best.pt", "teacher", classes=list("abcde"))
    return Call(lambda: train(TINY, "distilled", train_npz, val_npz, tmp / "runs", teacher), CheckpointError)


def teacher_weights_as_student(tmp: Path) -> Command:
    lying = write_checkpoint(tmp / "student" / "best.pt", "student", weights_of="teacher")
    return Command(["predict", str(image_file(tmp)), "--model", str(lying)])


def random_bytes_best_pt(tmp: Path) -> Command:
    (tmp / "model").mkdir()
    (tmp / "model" / "best.pt").write_bytes(np.random.default_rng(1).bytes(4096))
    return Command(["predict", str(image_file(tmp)), "--model", str(tmp / "model")])


def text_file_best_pt(tmp: Path) -> Call:
    path = tmp / "best.pt"
    path.write_text("epoch 3: best val macro-F1 0.71\n")
    return Call(lambda: load_trained(path), CheckpointError)


def state_dict_without_meta(tmp: Path) -> Call:
    path = tmp / "best.pt"
    torch.save(build_model("student", "tiny", num_classes=3).state_dict(), path)
    return Call(lambda: load_trained(path), CheckpointError)


def malicious_reduce_torch_save(tmp: Path) -> Call:
    path = tmp / "best.pt"
    torch.save({"model": {}, "meta": Payload(tmp / "PWNED")}, path)
    return Call(lambda: load_trained(path), CheckpointError)


def malicious_reduce_plain_pickle(tmp: Path) -> Command:
    path = tmp / "best.pt"
    path.write_bytes(pickle.dumps({"model": Payload(tmp / "PWNED")}))
    return Command(["predict", str(image_file(tmp)), "--model", str(path)])


def mlflow_closed_port_train_stage(tmp: Path) -> Call:
    env = {"MLFLOW_TRACKING_URI": closed_port_url()}
    return Call(lambda: train_stage(TINY, "teacher", Layout(tmp), progress=False), TrackingError, env=env)


def mlflow_closed_port_predict_registry(tmp: Path) -> Command:
    url = closed_port_url()
    write_params(tmp, f"mlflow:\n  tracking_uri: {url}\n")
    return Command(["predict", str(image_file(tmp))], env={"MLFLOW_TRACKING_URI": url})  # models:/...@champion


def mlflow_closed_port_promote(tmp: Path) -> Command:
    write_params(tmp)
    return Command(["promote", "hdkd-student", "1"], env={"MLFLOW_TRACKING_URI": closed_port_url()})


def tune_disabled(tmp: Path) -> Command:
    write_params(tmp, "tune:\n  enabled: false\n")
    return Command(["tune"])


def optuna_bad_scheme(tmp: Path) -> Command:
    write_params(tmp)
    return Command(
        ["tune", "--join", "--first-worker", "0", "--set", "tune.enabled=true", "--set", "tune.storage=foo://optuna"]
    )


def optuna_url_without_scheme(tmp: Path) -> Command:
    write_params(tmp)
    return Command(
        ["tune", "--join", "--first-worker", "0", "--set", "tune.enabled=true", "--set", "tune.storage=optuna.db"]
    )


def optuna_sqlite_missing_folder(tmp: Path) -> Command:
    write_params(tmp)
    storage = f"sqlite:///{tmp}/missing/optuna.db"
    return Command(
        ["tune", "--join", "--first-worker", "0", "--set", "tune.enabled=true", "--set", f"tune.storage={storage}"]
    )


def predict_missing_file(tmp: Path) -> Command:
    checkpoint = write_checkpoint(tmp / "student" / "best.pt", "student")
    (tmp / "scans[v2]").mkdir()
    return Command(["predict", str(tmp / "scans[v2]" / "missing.png"), "--model", str(checkpoint)])


# (builder, what the message must contain: the thing at fault first, then what to do), `{tmp}` is tmp_path.
CASES = [
    pytest.param(
        ingest_stage_truncated_png,
        ["{tmp}/src/b/cut.png: corrupt or truncated image data", "set data.on_bad_image: skip"],
        id="ingest-stage-truncated-png",
    ),
    pytest.param(
        ingest_zero_byte_jpeg,
        ["{tmp}/src/a/zero.jpg: empty file (0 bytes)", "Fix or remove the file"],
        id="ingest-zero-byte-jpeg",
    ),
    pytest.param(
        imagefolder_one_class,
        ["{tmp}/src: every image is of one class ('only')", "add the images of the other classes"],
        id="imagefolder-one-class",
    ),
    pytest.param(
        ham_csv_unknown_label,
        ["HAM10000_metadata.csv line 4: dx 'melanomma' is not a HAM-10000 class", "correct the metadata"],
        id="ham-csv-unknown-label",
    ),
    pytest.param(
        ham_csv_empty,
        ["{tmp}/ham/HAM10000_metadata.csv: not a readable CSV", "comma-separated text with a header row"],
        id="ham-csv-empty",
    ),
    pytest.param(
        medmnist_other_keys,
        ["{tmp}/mnist.npz: missing array(s) train_images", "(found: x_train, y_train)", "a MedMNIST .npz holds"],
        id="medmnist-npz-other-keys",
    ),
    pytest.param(
        medmnist_object_arrays,
        ["{tmp}/mnist.npz: array 'train_images' holds Python objects", "a MedMNIST .npz holds"],
        id="medmnist-npz-object-array",
    ),
    pytest.param(
        medmnist_text_file,
        ["{tmp}/mnist.npz: not an .npz file", "a MedMNIST .npz holds"],
        id="medmnist-text-file-named-npz",
    ),
    pytest.param(
        train_cli_npz_missing_key,
        ["{tmp}/train.npz: missing array(s) classes", "run the split stage again"],
        id="train-cli-split-npz-missing-key",
    ),
    pytest.param(
        split_npz_object_array,
        ["{tmp}/val.npz: array 'classes' holds Python objects", "run the split stage again"],
        id="split-npz-object-array",
    ),
    pytest.param(
        split_npz_random_bytes,
        ["{tmp}/train.npz: not an .npz file", "run the split stage again"],
        id="split-npz-random-bytes",
    ),
    pytest.param(
        train_val_class_sets_differ,
        ["{tmp}/train.npz and {tmp}/val.npz name different classes", "['a', 'b', 'c'] vs ['a', 'b']", "dvc repro"],
        id="train-val-class-sets-differ",
    ),
    pytest.param(
        params_yaml_syntax_error,
        ["params.yaml: not valid YAML at line 3, column 5 (expected ',' or ']'", "indented with spaces"],
        id="params-yaml-syntax-error",
    ),
    pytest.param(
        params_not_utf8,
        ["{tmp}/params.yaml: not valid YAML", "can't decode byte 0xe9", "it must be UTF-8 text"],
        id="params-not-utf8",
    ),
    pytest.param(
        params_unknown_key_in_set,
        ["params.yaml is not valid:", "distill.alpah: unknown key", "check the spelling"],
        id="params-unknown-key-in-set",
    ),
    pytest.param(
        params_wrong_enum_override,
        ["teacher.opt: Input should be 'adam', 'adamw' or 'sgd'", "(got 'adamx')"],
        id="params-wrong-enum-override-keeps-file",
    ),
    pytest.param(
        params_negative_epochs,
        ["student.epochs: Input should be greater than or equal to 1", "(got -1)"],
        id="params-negative-epochs",
    ),
    pytest.param(
        params_image_size_unfit,
        ["data.image_size 40 does not fit the student at model.preset 'tiny'", "use a multiple of 16"],
        id="params-image-size-unfit-for-student",
    ),
    pytest.param(
        train_unknown_kind,
        ["unknown model kind 'techer'", "use one of teacher, student, distilled"],
        id="train-unknown-kind",
    ),
    pytest.param(
        distill_without_teacher,
        ["HDKD distillation needs the trained teacher", "(--teacher)"],
        id="distill-without-teacher",
    ),
    pytest.param(
        distill_from_student_checkpoint,
        ["{tmp}/runs[v2]/best.pt: holds a 'student' network, not a teacher", "pass the teacher's best.pt"],
        id="distill-from-student-checkpoint",
    ),
    pytest.param(
        distill_teacher_other_class_count,
        ["{tmp}/teacher/best.pt: teacher was trained for", "['a', 'b', 'c', 'd', 'e']", "retrain the teacher"],
        id="distill-teacher-of-other-class-count",
    ),
    pytest.param(
        teacher_weights_as_student,
        ["{tmp}/student/best.pt: checkpoint does not match the model", "another preset, model kind or class count"],
        id="teacher-weights-loaded-as-student",
    ),
    pytest.param(
        random_bytes_best_pt,
        ["{tmp}/model/best.pt: not a PyTorch checkpoint", "use a best.pt or last.pt written by"],
        id="random-bytes-named-best-pt",
    ),
    pytest.param(
        text_file_best_pt,
        ["{tmp}/best.pt: not a PyTorch checkpoint", "use a best.pt or last.pt written by"],
        id="text-file-named-best-pt",
    ),
    pytest.param(
        state_dict_without_meta,
        ["{tmp}/best.pt: not an HDKD checkpoint (no 'model' entry)", "use a best.pt or last.pt written by"],
        id="bare-state-dict-checkpoint",
    ),
    pytest.param(
        malicious_reduce_torch_save,
        ["{tmp}/best.pt: refused to load: it holds posix.system", "weights_only=True", "only load checkpoints"],
        id="malicious-reduce-in-torch-save",
    ),
    pytest.param(
        malicious_reduce_plain_pickle,
        ["{tmp}/best.pt: not a PyTorch checkpoint", "use a best.pt or last.pt written by"],
        id="malicious-reduce-in-plain-pickle",
    ),
    pytest.param(
        mlflow_closed_port_train_stage,
        ["MLflow tracking server http://127.0.0.1:", "does not answer", "to sqlite:///mlflow.db"],
        id="mlflow-closed-port-train-stage",
    ),
    pytest.param(
        mlflow_closed_port_predict_registry,
        ["MLflow tracking server http://127.0.0.1:", "does not answer", "to sqlite:///mlflow.db"],
        id="mlflow-closed-port-predict-from-registry",
    ),
    pytest.param(
        mlflow_closed_port_promote,
        ["MLflow tracking server http://127.0.0.1:", "does not answer", "to sqlite:///mlflow.db"],
        id="mlflow-closed-port-promote",
    ),
    pytest.param(
        tune_disabled,
        ["tuning is disabled (tune.enabled: false in params.yaml)", "--set tune.enabled=true"],
        id="tune-disabled",
    ),
    pytest.param(
        optuna_bad_scheme,
        ["Optuna storage foo://optuna cannot be opened", "set tune.storage to sqlite:///optuna.db"],
        id="optuna-storage-bad-scheme",
    ),
    pytest.param(
        optuna_url_without_scheme,
        ["Optuna storage optuna.db cannot be opened", "set tune.storage to sqlite:///optuna.db"],
        id="optuna-storage-without-scheme",
    ),
    pytest.param(
        optuna_sqlite_missing_folder,
        ["Optuna storage sqlite:///{tmp}/missing/optuna.db cannot be opened", "set tune.storage to"],
        id="optuna-sqlite-in-missing-folder",
    ),
    pytest.param(
        predict_missing_file,
        ["{tmp}/scans[v2]/missing.png: no such file or folder"],
        id="predict-missing-file",
    ),
]


# ---------------------------------------------------------------- running a case


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder below `root`."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(root.rglob("*"))
    }


def error_of_call(call: Call) -> str:
    with pytest.raises(HDKDError) as raised:
        call.run()
    assert type(raised.value) is call.error, f"{type(raised.value).__name__}: {raised.value}"
    return str(raised.value)


def error_of_command(command: Command, tmp: Path, monkeypatch, capsys) -> str:
    """The `error: ...` line and its indented detail lines, after checking exit status and traceback."""
    if command.process:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "COLUMNS": "80", **command.env}
        done = subprocess.run(command.args, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
        status, stderr = done.returncode, done.stderr
    else:
        monkeypatch.setenv("COLUMNS", "80")  # Rich wraps at the terminal width: an 80-column terminal
        monkeypatch.setattr(sys, "argv", ["hdkd", *command.args])
        with pytest.raises(SystemExit) as exited:
            main()
        status, stderr = exited.value.code, capsys.readouterr().err
    assert status == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, stderr
    detail = itertools.takewhile(lambda line: line.startswith("  "), lines[starts[0] + 1 :])
    return "\n".join([lines[starts[0]], *detail])


@pytest.fixture
def tracking_uri_kept():
    """`hdkd predict` points MLflow at the params' server for the whole process: put the previous one back."""
    previous = mlflow.get_tracking_uri()
    yield
    use_store(previous)


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_input_fails_with_one_clear_message_and_writes_nothing(
    build, expected, tmp_path, monkeypatch, capsys, tracking_uri_kept
):
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/train, params.yaml) land in tmp_path
    attempt = build(tmp_path)
    in_process = isinstance(attempt, Call) or not attempt.process
    if in_process:
        for key, value in attempt.env.items():
            monkeypatch.setenv(key, value)
    before = snapshot(tmp_path)
    began = time.monotonic()
    if isinstance(attempt, Call):
        message = error_of_call(attempt)
    else:
        message = error_of_command(attempt, tmp_path, monkeypatch, capsys)
    if in_process:  # fail fast: MLflow alone retries a refused connection for about four minutes
        assert time.monotonic() - began < 30
    for fragment in expected:
        assert fragment.format(tmp=tmp_path) in message, message
    assert snapshot(tmp_path) == before, "the failed call wrote, changed or left files"
    assert not (tmp_path / "PWNED").exists(), "a pickled payload ran"


def test_the_pickled_payload_does_run_when_unpickled(tmp_path):
    """The control for the two malicious-reduce cases: their "payload did not run" can fail."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "PWNED")))  # unsafe on purpose: the control
    assert (tmp_path / "PWNED").exists()
