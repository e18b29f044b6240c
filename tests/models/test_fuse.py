import pytest
import torch
from torch import nn

from hdkd.models import build_model
from hdkd.models.fuse import ConvGELU, InferenceCBAM, fast_bf16, fold_bn_into_next_conv, prepare_teacher


def _randomise_batchnorms(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, as a trained teacher would have."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


@pytest.mark.parametrize("block", ["mbcsa", "mbconv"])
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_prepared_teacher_matches_the_eval_teacher(preset, block):
    torch.manual_seed(0)
    teacher = build_model("teacher", preset, 5, block=block)
    with torch.no_grad():
        _randomise_batchnorms(teacher)
    teacher.eval()
    prepared = prepare_teacher(teacher)
    x = torch.randn(4, 3, teacher.img_size, teacher.img_size)
    with torch.no_grad():
        logits, features = teacher(x, return_features=True)
        fast_logits, fast_features = prepared(x, return_features=True)
    torch.testing.assert_close(fast_logits, logits, rtol=1e-5, atol=1e-5)
    assert len(fast_features) == len(features) == 3
    for fast, ref in zip(fast_features, features, strict=True):
        assert fast.shape == ref.shape
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_prepared_teacher_has_no_batchnorm_and_no_gradients_and_leaves_the_original_alone():
    teacher = build_model("teacher", "tiny", 3).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    prepared = prepare_teacher(teacher)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in prepared.modules())
    assert any(isinstance(m, ConvGELU) for m in prepared.modules())  # the CPU copy fuses conv -> GELU
    assert any(isinstance(m, InferenceCBAM) for m in prepared.modules())
    assert not prepared.training
    assert not any(p.requires_grad for p in prepared.parameters())
    assert type(prepared) is type(teacher)
    # the original is untouched: still has its BatchNorms, its mode and trainable weights
    assert teacher.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_bn_before_a_padded_conv_is_refused():
    bn, conv = nn.BatchNorm2d(4).eval(), nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="no padding"):
        fold_bn_into_next_conv(bn, conv)


def test_hdkd_trainer_distils_from_a_prepared_teacher(tmp_path):
    from hdkd.config import DistillParams
    from hdkd.training.loop import Trainer

    teacher = build_model("teacher", "tiny", 3)
    trainer = Trainer(
        build_model("distilled", "tiny", 3),
        "distilled",
        DistillParams(epochs=1),
        tmp_path,
        seed=0,
        class_names=["a", "b", "c"],
        teacher=teacher,
        progress=False,
    )
    assert trainer.teacher is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trainer.teacher.modules())
    loss, _, _ = trainer.step(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(loss)


def test_compile_is_opt_in(monkeypatch):
    from torch._dynamo.eval_frame import OptimizedModule

    teacher = build_model("teacher", "tiny", 3)
    monkeypatch.delenv("HDKD_COMPILE_TEACHER", raising=False)
    assert not isinstance(prepare_teacher(teacher), OptimizedModule)
    monkeypatch.setenv("HDKD_COMPILE_TEACHER", "1")
    assert isinstance(prepare_teacher(teacher), OptimizedModule)  # compiles lazily, on the first call
    assert not isinstance(prepare_teacher(teacher, compile=False), OptimizedModule)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# bf16 keeps 8 significant bits: each rounding is within 2^-9 (0.2%) relative. Through the teacher's layers
# such errors add up like a random walk: measured 0.4-0.5% on the logits and 0.3-0.9% on the stage maps
# (tiny, small and paper presets). 2% leaves room for that and still catches a real fault (a missing cast,
# an unfolded BN, maps from the wrong stage), which moves them by tens of percent.
BF16_OUTPUT_TOLERANCE = 0.02
# The HDKD loss (a KL term on the logits plus weighted MSEs against the stage maps) moved by 0.01-0.05% on
# these batches: the teacher's bf16 error is small against the student-teacher gap it measures. 1% is the
# bar the outputs' own error could at most reach, so the training signal keeps its meaning.
BF16_LOSS_TOLERANCE = 0.01


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_bf16_teacher_stays_within_bf16_rounding_of_the_fp32_teacher(preset):
    torch.manual_seed(0)
    teacher = build_model("teacher", preset, 5)
    with torch.no_grad():
        _randomise_batchnorms(teacher)
    fp32, bf16 = prepare_teacher(teacher, "fp32"), prepare_teacher(teacher, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    x = torch.randn(8, 3, teacher.img_size, teacher.img_size)
    with torch.no_grad():
        logits, features = fp32(x, return_features=True)
        fast_logits, fast_features = bf16(x, return_features=True)
    assert fast_logits.dtype == torch.float32 and all(f.dtype == torch.float32 for f in fast_features)
    assert _relative(fast_logits, logits) < BF16_OUTPUT_TOLERANCE
    for fast, ref in zip(fast_features, features, strict=True):
        assert fast.shape == ref.shape
        assert _relative(fast, ref) < BF16_OUTPUT_TOLERANCE


def test_hdkd_loss_with_the_bf16_teacher_matches_the_fp32_teacher_on_a_fixed_batch():
    from hdkd.training.losses import HDKDLoss

    torch.manual_seed(0)
    teacher, student = build_model("teacher", "small", 5), build_model("distilled", "small", 5).train()
    with torch.no_grad():
        _randomise_batchnorms(teacher)
    x, labels = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss = HDKDLoss(lambda_feat=10.0)
    with torch.no_grad():
        student_logits, student_features = student(x, return_features=True)
        losses = {}
        for dtype in ("fp32", "bf16"):
            teacher_logits, teacher_features = prepare_teacher(teacher, dtype)(x, return_features=True)
            losses[dtype], _ = loss(student_logits, student_features, teacher_logits, teacher_features, labels)
    assert abs(float(losses["bf16"] / losses["fp32"]) - 1) < BF16_LOSS_TOLERANCE


def test_teacher_dtype_auto_uses_bf16_only_where_it_is_native():
    teacher = build_model("teacher", "tiny", 3)
    expected = torch.bfloat16 if fast_bf16("cpu") else torch.float32
    assert next(prepare_teacher(teacher, "auto").parameters()).dtype == expected
    assert next(prepare_teacher(teacher, "fp32").parameters()).dtype == torch.float32
