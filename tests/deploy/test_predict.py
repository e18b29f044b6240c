"""`hdkd predict` on real image files, through every backend this machine has."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hdkd.cli import app
from hdkd.deploy.predict import PredictError, Predictor, find_images
from hdkd.deploy.runtime import preprocess, softmax
from hdkd.training.checkpoint import load_trained
from tests.helpers import CLASSES, SIZE, compiled_student, toy_images


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compiled_student(tmp_path_factory.getbasetemp())


@pytest.fixture
def images(tmp_path):
    """Two PNGs (one grey) at the model size, a larger JPEG in a subfolder, a corrupt PNG, a text file."""
    pixels = toy_images(3, len(CLASSES), 48, seed=3)[0]
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    Image.fromarray(pixels[0][:SIZE, :SIZE]).save(folder / "a.png")
    Image.fromarray(pixels[1][:SIZE, :SIZE, 0]).save(folder / "b_grey.png")
    Image.fromarray(pixels[2]).save(folder / "more" / "c.jpg", quality=95)
    (folder / "more" / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("not an image, and not an image extension")
    return folder


def _eager_probabilities(checkpoint, path):
    model, _ = load_trained(checkpoint)
    rgb = np.array(Image.open(path).convert("RGB"))
    with torch.inference_mode():
        return softmax(model(torch.from_numpy(preprocess(rgb[None], SIZE))).numpy())[0]


def test_predict_json_lines_for_a_folder_with_one_broken_file(compiled, images):
    student, out, _ = compiled
    result = CliRunner().invoke(app, ["predict", str(images), "--model", str(out), "--json"])
    assert result.exit_code == 1  # one image failed, the others were still classified
    assert f"{images / 'more' / 'd_broken.png'}: not a readable image" in result.stderr
    assert "3 images classified with onnx" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1] == {"path": str(images / "more" / "d_broken.png"), "error": lines[-1]["error"]}
    lines = lines[:-1]
    assert [line["path"] for line in lines] == [str(images / n) for n in ("a.png", "b_grey.png", "more/c.jpg")]
    for line in lines:
        assert line["class"] in CLASSES and list(line["probabilities"]) == CLASSES
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert line["probability"] == max(line["probabilities"].values())
        # ONNX Runtime on the file = eager PyTorch on the same file with the training eval transform.
        expected = _eager_probabilities(student.checkpoint, line["path"])
        np.testing.assert_allclose(list(line["probabilities"].values()), expected, atol=1e-5)


def test_predict_piped_gives_whole_paths_as_tsv(compiled, images):
    student, _, _ = compiled
    files = [str(images / "a.png"), str(images / "more" / "c.jpg")]
    result = CliRunner().invoke(app, ["predict", *files, "--model", str(student.checkpoint)])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split("\t") == ["image", "class", "p", *CLASSES]
    assert [row.split("\t")[0] for row in rows] == files  # whole names, never cut to the terminal width
    assert all(row.split("\t")[1] in CLASSES for row in rows)
    assert f"model {student.checkpoint}, backend torch" in result.stderr


def test_predict_checks_its_paths_before_loading_a_model(tmp_path):
    missing = tmp_path / "missing.png"
    # The model does not exist either: the path check must come first, so that is never reached.
    result = CliRunner().invoke(app, ["predict", str(missing), "--model", "models:/no-such-model@champion"])
    assert result.exit_code == 1
    assert f"{missing}: no such file or folder" in result.stderr
    assert "no-such-model" not in result.output


def test_predict_json_gives_a_line_for_a_failed_file_too(compiled, images):
    _, out, _ = compiled
    broken = images / "more" / "d_broken.png"
    result = CliRunner().invoke(app, ["predict", str(broken), "--model", str(out), "--json"])
    assert result.exit_code == 1
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert line["path"] == str(broken) and "not a readable image" in line["error"]


def test_auto_backend_and_explicit_backends(compiled, images):
    student, out, _ = compiled
    assert Predictor.load(out).backend == "onnx"
    assert Predictor.load(student.checkpoint).backend == "torch"
    program = Predictor.load(out, backend="torch")
    assert program.backend == "torch" and program.source.endswith("student.pt2")
    pixels = [np.array(Image.open(images / "more" / "c.jpg").convert("RGB"))]
    np.testing.assert_allclose(Predictor.load(out).predict_images(pixels), program.predict_images(pixels), atol=1e-5)
    with pytest.raises(PredictError, match="no tensorrt artifact was compiled"):
        Predictor.load(out, backend="tensorrt")
    with pytest.raises(PredictError, match="no onnx artifact was compiled"):
        Predictor.load(student.checkpoint, backend="onnx")


def test_a_clean_run_exits_zero_and_bad_models_are_named(compiled, images, tmp_path):
    _, out, _ = compiled
    result = CliRunner().invoke(app, ["predict", str(images / "a.png"), "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    with pytest.raises(PredictError, match=f"{tmp_path}: no model here"):
        Predictor.load(tmp_path)
    assert list(find_images([images])) == [
        images / "a.png",
        images / "b_grey.png",
        *sorted((images / "more").iterdir()),
    ]


def test_auto_prefers_the_fastest_passing_artifact_and_passes_over_what_cannot_run_here(compiled, tmp_path):
    from hdkd.deploy.predict import fastest_first

    manifest = {
        "artifacts": {"onnx": {}, "onnx_int8": {}, "torch_export": {}},
        "latency": {"onnx": {"b1_median_ms": 2.0}, "onnx_int8": {"b1_median_ms": 1.0}},
    }
    assert fastest_first(manifest) == ["onnx_int8", "onnx"]
    manifest["latency"]["onnx_int8"]["b1_median_ms"] = 3.0
    assert fastest_first(manifest) == ["onnx", "onnx_int8"]

    # A TensorRT engine measured fastest on the compiling machine, but this one cannot run it: ONNX is used.
    _, out, _ = compiled
    copy = tmp_path / "compiled"
    shutil.copytree(out, copy)
    listed = json.loads((copy / "artifacts.json").read_text())
    listed["artifacts"]["tensorrt_fp16"] = {"file": "student_trt_fp16.ep", "target": "tensorrt", "precision": "fp16"}
    listed["latency"]["tensorrt_fp16"] = {"b1_median_ms": 0.01}
    (copy / "student_trt_fp16.ep").write_bytes(b"an engine for another GPU")
    (copy / "artifacts.json").write_text(json.dumps(listed))
    predictor = Predictor.load(copy)
    # Without CUDA it cannot run at all; with CUDA the manifest does not name the GPU that built it.
    assert predictor.backend == "onnx"
    assert predictor.passed_over and predictor.passed_over[0].startswith("tensorrt_fp16: ")
