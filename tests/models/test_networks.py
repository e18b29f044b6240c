import pytest
import timm
import torch

from hdkd.models import PRESETS, HDKDStudent, build_model
from hdkd.models.blocks import CBAM, MBCSA, MBConv
from hdkd.models.complexity import count_parameters
from tests.helpers import PAPER_PARAMS


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("kind", ["teacher", "student", "distilled"])
def test_timm_registered_models_have_expected_shapes(kind, preset):
    size = PRESETS[preset].img_size
    model = timm.create_model(f"hdkd_{kind}_{preset}", num_classes=5).eval()
    logits, features = model(torch.randn(2, 3, size, size), return_features=True)
    assert logits.shape == (2, 5)
    widths = PRESETS[preset].channels
    assert [tuple(f.shape) for f in features] == [
        (2, widths[0], size // 2, size // 2),
        (2, widths[1], size // 4, size // 4),
        (2, widths[2], size // 8, size // 8),
    ]


@pytest.mark.parametrize("kind", ["teacher", "student", "distilled"])
def test_paper_preset_shapes_and_parameter_counts(kind):
    model = timm.create_model(f"hdkd_{kind}_paper", num_classes=7).eval()
    assert count_parameters(model) == PAPER_PARAMS[kind]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 7)


def test_teacher_and_student_stage_maps_match_for_feature_distillation():
    teacher, student = build_model("teacher", "tiny", 4), build_model("distilled", "tiny", 4)
    x = torch.randn(2, 3, 32, 32)
    _, tf = teacher(x, return_features=True)
    _, sf = student(x, return_features=True)
    assert [t.shape for t in tf] == [s.shape for s in sf]


def test_distilled_student_trains_with_two_heads_and_predicts_their_mean():
    model = build_model("distilled", "tiny", 3)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    cls, dist = model(x)
    assert cls.shape == dist.shape == (4, 3)
    assert not torch.allclose(cls, dist)
    model.eval()
    with torch.no_grad():
        tokens = model.dflt(model.forward_features(x))
        expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_plain_student_has_no_distillation_token_or_head():
    plain, hdkd = build_model("student", "tiny", 3), build_model("distilled", "tiny", 3)
    assert isinstance(plain, HDKDStudent) and plain.head_dist is None and plain.dflt.dist_token is None
    assert plain.dflt.pos_embed.shape[1] == hdkd.dflt.pos_embed.shape[1] - 1


def test_mbconv_ablation_swaps_cbam_for_squeeze_excitation():
    model = build_model("teacher", "tiny", 3, block="mbconv")
    assert any(isinstance(m, MBConv) for m in model.modules())
    assert not any(isinstance(m, CBAM) for m in model.modules())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_mbcsa_downsamples_and_keeps_residual_shapes():
    block = MBCSA(16, 24, downsample=True)
    assert block(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)
    with pytest.raises(ValueError, match="keeps its width"):
        MBCSA(16, 24, downsample=False)


def test_image_size_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="divisible by 8 \\* patch"):
        build_model("distilled", "tiny", 3, img_size=40)


def test_pretrained_weights_are_refused_clearly():
    with pytest.raises(ValueError, match="no published pretrained weights"):
        timm.create_model("hdkd_teacher_tiny", pretrained=True)
