"""The compile stage on a tiny HDKD student: real exports, real ONNX Runtime, real parity checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from hdkd.cli import app
from hdkd.config import CompileParams
from hdkd.deploy.artifacts import ARTIFACT_INDEX, FILES
from hdkd.deploy.compile import ParityError, compile_student, parity, parity_failure
from hdkd.deploy.export import CompileError
from hdkd.deploy.quantize import (
    acceptance,
    calibration_and_probe,
    conv_names,
    conv_sensitivity,
    quantize_int8,
    with_float_convs,
)
from hdkd.deploy.runtime import OnnxRunner, TorchRunner, load_runner, preprocess
from hdkd.deploy.tensorrt_engines import tensorrt_unavailable
from tests.helpers import CLASSES, FAST, SIZE, compiled_student, toy_images, write_split, write_student


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compiled_student(tmp_path_factory.getbasetemp())


def test_onnx_and_torch_export_pass_parity_and_are_timed(compiled):
    student, out, metrics = compiled
    for name in ("onnx", "torch_export"):
        assert metrics[name]["status"] == "built"
        assert metrics[name]["max_abs_diff"] <= FAST.parity_max_abs_diff
        assert metrics[name]["top1_agreement"] == 1.0
        for key in ("b1_median_ms", "b1_p90_ms", "b16_median_ms", "b16_p90_ms", "speedup_b1", "speedup_b16"):
            assert metrics[name][key] > 0
    assert metrics["eager"]["b1_median_ms"] > 0 and metrics["val_images"] == 24
    assert json.loads((out.parent / "compile.json").read_text()) == metrics
    onnx.checker.check_model(str(out / FILES["onnx"]), full_check=True)

    manifest = json.loads((out / ARTIFACT_INDEX).read_text())
    assert manifest["classes"] == CLASSES and manifest["image_size"] == SIZE
    assert set(manifest["normalization"]) == {"mean", "std"}
    assert set(manifest["artifacts"]) == {"onnx", "torch_export"}
    assert manifest["targets"] == {
        "onnx": "built",
        "torch_export": "built",
        "tensorrt": manifest["targets"]["tensorrt"],
    }
    assert manifest["source"]["checkpoint"] == str(student.checkpoint)


def test_artifacts_keep_a_dynamic_batch_axis(compiled):
    _, out, _ = compiled
    inputs = preprocess(toy_images(5, 3, SIZE, seed=7)[0], SIZE)
    for name in ("onnx", "torch_export"):
        runner = load_runner(out, name)
        for batch in (1, 5):
            assert runner.run(inputs[:batch]).shape == (batch, len(CLASSES))
    # More than max_batch goes through in chunks.
    many = np.concatenate([inputs] * 4)
    assert load_runner(out, "onnx")(many).shape == (20, len(CLASSES))


def test_int8_recipes_quantize_what_they_name(compiled, tmp_path):
    _, out, _ = compiled
    calibration = np.random.default_rng(0).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)

    def ops(**recipe):
        path = quantize_int8(out / FILES["onnx"], tmp_path / "q.onnx", calibration, **recipe)
        return [node.op_type for node in onnx.load(str(path)).graph.node]

    stage = ops()  # the stage's recipe: QDQ around the convolutions only
    assert "Conv" in stage and "QLinearConv" not in stage and stage.count("DequantizeLinear") > stage.count("Conv")
    assert "MatMul" in stage
    assert "QLinearConv" in ops(qoperator=True) and "Conv" not in ops(qoperator=True)
    every = ops(op_types=("Conv", "MatMul"))
    assert every.count("DequantizeLinear") > stage.count("DequantizeLinear")


def float_convs_of(path: Path) -> set[str]:
    """Convolutions of a QDQ model whose weights are not dequantized from int8, that is, left in float."""
    graph = onnx.load(str(path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    return {node.name for node in graph.node if node.op_type == "Conv" and node.input[1] not in dequantized}


def test_accuracy_control_leaves_the_most_sensitive_convolutions_in_float_until_the_gate_passes(compiled, tmp_path):
    _, out, _ = compiled
    images = np.random.default_rng(0).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    calibration, probe, fp32 = images[:8], images[8:], out / FILES["onnx"]
    ranked = conv_sensitivity(fp32, calibration, probe, tmp_path)
    assert sorted(conv for conv, _ in ranked) == sorted(conv_names(fp32)) and len(ranked) >= 4
    assert [error for _, error in ranked] == sorted(error for _, error in ranked)

    seen: list[set[str]] = []

    def judge(path: Path) -> tuple[dict, str | None]:  # a gate that passes once three convolutions are float
        seen.append(float_convs_of(path))
        return {"top1_agreement": 0.5}, None if len(seen[-1]) >= 3 else "too far from fp32"

    lines: list[str] = []
    gate = with_float_convs(fp32, tmp_path / "int8.onnx", calibration, probe, judge, 1.0, lines.append)
    assert gate.refused is None and gate.float_convs == [conv for conv, _ in ranked[:3]]
    assert len(lines) == 3 and "missed its gate (too far from fp32)" in lines[0]
    assert lines[2].endswith(f"with 2 of {len(ranked)} convolutions in float: too far from fp32")
    assert seen == [set(), set(gate.float_convs[:1]), set(gate.float_convs[:2]), set(gate.float_convs)]
    assert float_convs_of(tmp_path / "int8.onnx") == set(gate.float_convs) and gate.convs == len(ranked)

    def refuse(path: Path) -> tuple[dict, str | None]:
        seen.append(float_convs_of(path))
        return {}, "too far from fp32"

    seen.clear()
    gate = with_float_convs(fp32, tmp_path / "int8.onnx", calibration, probe, refuse, max_float_share=0.5)
    most = len(ranked) // 2
    assert len(seen) == most + 1 and len(gate.float_convs) == most
    assert gate.refused == f"too far from fp32 (with the {most} most sensitive of {len(ranked)} convolutions in float)"
    seen.clear()
    gate = with_float_convs(fp32, tmp_path / "int8.onnx", calibration, probe, refuse, max_float_share=0.0)
    assert seen == [set()] and gate.refused == "too far from fp32" and gate.float_convs == []


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="CUDA and torch-tensorrt are present here")
def test_the_onnx_model_has_cbam_pooling_as_global_pools_and_no_batchnorm(compiled):
    _, out, _ = compiled
    ops = [node.op_type for node in onnx.load(str(out / FILES["onnx"])).graph.node]
    # tiny preset: one MBCSA block per stage 2 and 3, each CBAM pooling once by mean and once by max over (H, W)
    assert ops.count("GlobalAveragePool") == ops.count("GlobalMaxPool") == 2
    assert ops.count("ReduceMean") == ops.count("ReduceMax") == 2  # spatial attention: over channels, kept
    assert "BatchNormalization" not in ops


def test_tensorrt_without_cuda_is_recorded_as_skipped_and_the_stage_succeeds(compiled):
    _, out, metrics = compiled
    assert metrics["tensorrt"]["status"] == "skipped"
    assert "CUDA" in metrics["tensorrt"]["reason"] or "torch-tensorrt" in metrics["tensorrt"]["reason"]
    manifest = json.loads((out / ARTIFACT_INDEX).read_text())
    assert manifest["targets"]["tensorrt"] == "skipped"
    assert manifest["skipped"]["tensorrt"] == metrics["tensorrt"]["reason"]
    assert not any(name.startswith("tensorrt") for name in manifest["artifacts"])
    assert not list(out.glob("*.ep"))


def _tamper(path: Path) -> None:
    """Raise class 0 in one head's bias by 2: still a valid ONNX model, now a wrong one (logit 0 off by 1)."""
    model = onnx.load(str(path))
    bias = next(init for init in model.graph.initializer if list(init.dims) == [len(CLASSES)])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.array([2, 0, 0], np.float32), bias.name))
    onnx.save(model, str(path))


def test_a_tampered_onnx_model_fails_parity_with_a_clear_message(compiled, tmp_path):
    student, out, metrics = compiled
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((out / FILES["onnx"]).read_bytes())
    _tamper(broken)
    inputs = preprocess(np.load(student.val)["images"], SIZE)
    reference = load_runner(out, "torch_export")(inputs)
    stats = parity(reference, OnnxRunner("onnx", broken, 16)(inputs))
    message = parity_failure("onnx", stats, FAST.parity_max_abs_diff, FAST.parity_min_agreement)
    assert message is not None and message.startswith("onnx: max |logit diff| 1 > 0.001")
    # The honest artifact passes the same check, and a threshold below its own error fails it.
    assert parity_failure("onnx", metrics["onnx"], FAST.parity_max_abs_diff, 1.0) is None
    too_strict = parity_failure("onnx", {**metrics["onnx"], "max_abs_diff": 1e-6}, 1e-9, 1.0)
    assert too_strict == "onnx: max |logit diff| 1e-06 > 1e-09"


def test_the_stage_fails_on_a_parity_failure_and_keeps_the_previous_output(compiled, tmp_path, monkeypatch):
    import hdkd.deploy.compile

    student, _, _ = compiled
    out = tmp_path / "compiled"
    out.mkdir()
    (out / "previous.txt").write_text("the last good build")

    def export_tampered(model, path, *args, **kwargs):
        # The good export of the shared fixture, altered: saves a second export and keeps the stage path real.
        path.write_bytes((compiled[1] / FILES["onnx"]).read_bytes())
        _tamper(path)
        return path

    monkeypatch.setattr(hdkd.deploy.compile, "export_onnx", export_tampered)
    params = CompileParams(targets=["onnx"], max_batch=16, latency_repeats=3)
    with pytest.raises(ParityError, match=r"onnx: max \|logit diff\| 1 > 0\.001"):
        compile_student(params, student.checkpoint, student.val, out, tmp_path / "compile.json", log=lambda _: None)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert not (tmp_path / "compile.json").exists()


def test_a_split_with_other_classes_is_refused_naming_the_checkpoint(compiled, tmp_path):
    student, _, _ = compiled
    other = write_split(tmp_path / "val.npz", 8, ["a", "b", "c"])
    with pytest.raises(CompileError, match=f"{student.checkpoint}: trained for classes"):
        compile_student(FAST, student.checkpoint, other, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_aoti_package_builds_and_passes_parity(compiled, tmp_path):
    student, _, _ = compiled
    params = CompileParams(targets=["aoti"], max_batch=16, latency_repeats=3)
    metrics = compile_student(params, student.checkpoint, student.val, tmp_path / "out", log=lambda _: None)
    if metrics["aoti"]["status"] == "skipped":
        pytest.skip(metrics["aoti"]["reason"])
    assert metrics["aoti"]["max_abs_diff"] <= params.parity_max_abs_diff
    assert metrics["aoti"]["top1_agreement"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(tensorrt_unavailable() is not None, reason=f"TensorRT cannot run here: {tensorrt_unavailable()}")
def test_tensorrt_fp32_and_fp16_engines_pass_parity(compiled, tmp_path):
    student, _, _ = compiled
    params = CompileParams(targets=["tensorrt"], max_batch=16, latency_repeats=3)
    metrics = compile_student(params, student.checkpoint, student.val, tmp_path / "out", log=lambda _: None)
    assert metrics["tensorrt"]["status"] == "built"
    assert metrics["tensorrt_fp32"]["max_abs_diff"] <= params.parity_max_abs_diff
    assert metrics["tensorrt_fp32"]["top1_agreement"] >= params.parity_min_agreement
    assert metrics["tensorrt_fp16"]["max_abs_diff"] <= params.parity_max_abs_diff_fp16
    assert metrics["tensorrt_fp16"]["top1_agreement"] >= params.parity_min_agreement_fp16
    runner = load_runner(tmp_path / "out", "tensorrt_fp16")
    assert runner(preprocess(np.load(student.val)["images"][:3], SIZE)).shape == (3, len(CLASSES))


def test_int8_target_is_calibrated_on_train_images_and_accepted_or_refused_by_its_thresholds(tmp_path):
    student = write_student(tmp_path / "student")
    train = write_split(tmp_path / "train.npz", 32, CLASSES, seed=5)
    params = CompileParams(targets=["onnx", "onnx_int8"], max_batch=16, latency_repeats=3)
    out = tmp_path / "compiled"
    metrics = compile_student(params, student.checkpoint, student.val, out, log=lambda _: None, train_data=train)
    int8 = metrics["onnx_int8"]
    assert int8["status"] in {"built", "rejected"}
    expected = int8["top1_agreement"] >= params.int8_min_agreement and (
        int8["val_macro_f1_fp32"] - int8["val_macro_f1_int8"] <= params.int8_max_macro_f1_drop
    )
    assert (int8["status"] == "built") == expected
    assert int8["float_convs"] <= params.int8_max_float_share * int8["convs"]
    manifest = json.loads((out / ARTIFACT_INDEX).read_text())
    if expected:
        assert (out / FILES["onnx_int8"]).is_file() and "speedup_b1" in int8
        assert manifest["artifacts"]["onnx_int8"]["precision"] == "int8"
        float_convs = manifest["artifacts"]["onnx_int8"]["float_convs"]
        assert len(float_convs) == int8["float_convs"] and float_convs_of(out / FILES["onnx_int8"]) == set(float_convs)
        picture = tmp_path / "img.png"
        Image.fromarray(toy_images(1, 3, SIZE, seed=9)[0][0]).save(picture)
        command = ["predict", str(picture), "--model", str(out), "--backend", "onnx_int8", "--json"]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["class"] in CLASSES
    else:
        assert not (out / FILES["onnx_int8"]).exists() and manifest["rejected"]["onnx_int8"] == int8["reason"]


def test_convolutions_are_ranked_on_training_images_outside_the_calibration_set():
    images = np.arange(200)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    calibration, probe = calibration_and_probe(images, 64)
    assert len(calibration) == len(probe) == 64 and not set(calibration[:, 0, 0, 0]) & set(probe[:, 0, 0, 0])
    calibration, probe = calibration_and_probe(images[:100], 64)
    assert len(probe) == 36 and not set(calibration[:, 0, 0, 0]) & set(probe[:, 0, 0, 0])
    calibration, probe = calibration_and_probe(images[:40], 64)  # nothing to spare: ranked on the calibration set
    assert len(calibration) == 40 and np.array_equal(probe, calibration)


def test_int8_acceptance_names_what_it_missed():
    labels = np.arange(100) % 3
    reference = np.eye(3)[labels] * 5.0  # fp32 right on every image
    worse = reference.copy()
    worse[:10] = np.eye(3)[(labels[:10] + 1) % 3] * 5.0  # int8 wrong on 10 of them
    params = CompileParams()
    stats, refused = acceptance(reference, worse, labels, params)
    assert stats["top1_agreement"] == pytest.approx(0.9)
    assert refused is not None and "top-1 agreement with fp32 90.00% < 99%" in refused
    assert "validation macro-F1" in refused
    assert acceptance(reference, reference + 1e-3, labels, params)[1] is None


def test_int8_without_training_images_is_skipped_with_the_reason(tmp_path):
    student = write_student(tmp_path / "student")
    params = CompileParams(targets=["onnx_int8"], max_batch=16, latency_repeats=3)
    metrics = compile_student(params, student.checkpoint, student.val, tmp_path / "out", log=lambda _: None)
    assert metrics["onnx_int8"] == {"status": "skipped", "reason": metrics["onnx_int8"]["reason"]}
    assert "training split" in metrics["onnx_int8"]["reason"]


def test_backends_get_dense_nchw_batches_whatever_the_array_layout():
    """AOTInductor's compiled code reads its input as dense NCHW: a transposed NHWC view gave wrong logits."""
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    batch = preprocess(images, SIZE)
    assert batch.flags.c_contiguous and batch.shape == (3, 3, SIZE, SIZE)
    seen: list[bool] = []

    def backend(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.is_contiguous())
        return x.flatten(1)[:, :2]

    nhwc_view = np.ascontiguousarray(batch.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    logits = TorchRunner("any", backend, max_batch=2)(nhwc_view)
    assert seen == [True, True] and np.array_equal(logits, batch.reshape(3, -1)[:, :2])
