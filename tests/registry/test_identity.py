"""What the registry takes for the same model: checkpoint bytes that follow the weights alone, and compiled
artifacts judged by their own bytes, not by the latencies their index also records."""

import json

import torch

from hdkd.deploy.artifacts import ARTIFACT_INDEX, FILES
from hdkd.deploy.compile import compile_student
from hdkd.files import sha256_file
from hdkd.layout import Layout
from hdkd.registry.register import model_identity
from hdkd.training.checkpoint import save_checkpoint
from tests.helpers import FAST, write_student


def test_the_same_weights_saved_twice_give_the_same_bytes(tmp_path):
    payload = {"model": {"w": torch.arange(6.0).view(2, 3)}, "meta": {"kind": "teacher"}}
    save_checkpoint(tmp_path / "first.pt", payload)
    save_checkpoint(tmp_path / "second.pt", payload)
    assert sha256_file(tmp_path / "first.pt") == sha256_file(tmp_path / "second.pt")
    payload["model"]["w"][0, 0] = 0.5
    save_checkpoint(tmp_path / "second.pt", payload)
    assert sha256_file(tmp_path / "first.pt") != sha256_file(tmp_path / "second.pt")


def test_a_recompiled_student_with_the_same_artifacts_is_the_same_model(tmp_path):
    layout = Layout(tmp_path)
    student = write_student(layout.models / "distilled")
    compiled = layout.models / "compiled"
    compile_student(FAST, student.checkpoint, student.val, compiled, log=lambda _: None)
    first = model_identity("distilled", layout)
    assert first["checkpoint_sha256"] == sha256_file(student.checkpoint) and "compiled_sha256" in first

    index = json.loads((compiled / ARTIFACT_INDEX).read_text())
    for row in index["latency"].values():  # another run times the same artifacts differently
        row["b1_median_ms"] *= 2
    (compiled / ARTIFACT_INDEX).write_text(json.dumps(index))
    assert model_identity("distilled", layout) == first

    index["artifacts"]["onnx"]["sha256"] = sha256_file(compiled / FILES["torch_export"])  # another ONNX file
    (compiled / ARTIFACT_INDEX).write_text(json.dumps(index))
    assert model_identity("distilled", layout)["compiled_sha256"] != first["compiled_sha256"]
