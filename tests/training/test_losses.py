import math

import pytest
import torch
import torch.nn.functional as F

from hdkd.training.losses import HDKDLoss, HintonKDLoss, feature_distillation_loss, logit_distillation_loss


def test_soft_kd_matches_the_deit_formula():
    torch.manual_seed(0)
    cls, dist, teacher = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    t = 2.0
    kl = (F.softmax(teacher / t, 1) * (F.log_softmax(teacher / t, 1) - F.log_softmax(dist / t, 1))).sum()
    expected = 0.7 * F.cross_entropy(cls, labels) + 0.3 * kl * t * t / (4 * 5)
    got = logit_distillation_loss(cls, dist, teacher, labels, alpha=0.3, temperature=t, kind="soft")
    assert torch.allclose(got, expected, atol=1e-6)


def test_hard_kd_uses_the_teacher_argmax():
    cls = torch.zeros(2, 3)
    teacher = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    dist = torch.tensor([[0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([0, 0])
    only_kd = logit_distillation_loss(cls, dist, teacher, labels, alpha=1.0, kind="hard")
    assert only_kd < 1e-3
    wrong = logit_distillation_loss(cls, dist.roll(1, dims=1), teacher, labels, alpha=1.0, kind="hard")
    assert wrong > 5


def test_feature_loss_weights_pairs_by_position():
    teacher = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 1, 1)]
    student = [torch.ones(1, 2, 4, 4), torch.ones(1, 3, 2, 2) * 2, torch.ones(1, 4, 1, 1) * 3]
    # pairs (2, 3) counted from 0: MSE 4 * 1**2 + MSE 9 * 2**2
    assert feature_distillation_loss(teacher, student, stages=(2, 3), beta=2.0).item() == pytest.approx(40.0)
    assert feature_distillation_loss(teacher, student, stages=(1, 2, 3), beta=1.0).item() == pytest.approx(
        1 * 1 + 4 * 2 + 9 * 3
    )


def test_feature_loss_refuses_mismatched_shapes_naming_both():
    teacher = [torch.zeros(2, 16, 8, 8)]
    student = [torch.zeros(2, 32, 8, 8)]
    with pytest.raises(ValueError, match=r"teacher map \(2, 16, 8, 8\) and student map \(2, 32, 8, 8\)"):
        feature_distillation_loss(teacher, student, stages=(1,))


def test_teacher_features_carry_no_gradient():
    teacher = [torch.randn(1, 2, 2, 2, requires_grad=True)]
    student = [torch.randn(1, 2, 2, 2, requires_grad=True)]
    feature_distillation_loss(teacher, student, stages=(1,)).backward()
    assert teacher[0].grad is None and student[0].grad is not None


def test_feature_loss_sends_its_gradient_back_channels_last():
    """The student's backward pass stays in the channels_last layout it trains in (an NCHW gradient from the
    loss made every backward op after it mix layouts), and the value is the plain MSE's."""
    channels_last = torch.channels_last
    teacher = [torch.randn(2, 8, 4, 4).contiguous(memory_format=channels_last)]
    weights = torch.randn(2, 8, 4, 4).contiguous(memory_format=channels_last).requires_grad_()
    student = [weights * 1.0]  # a map inside the graph, as a network's stage output
    seen: list[torch.Tensor] = []
    student[0].register_hook(seen.append)
    loss = feature_distillation_loss(teacher, student, stages=(1,))
    loss.backward()
    assert seen[0].is_contiguous(memory_format=channels_last)
    assert loss.item() == pytest.approx(F.mse_loss(student[0], teacher[0]).item(), rel=1e-6)


def test_total_loss_adds_weighted_feature_term():
    torch.manual_seed(1)
    loss = HDKDLoss(lambda_feat=10.0, stages=(1,))
    logits = (torch.randn(2, 3), torch.randn(2, 3))
    teacher_logits, labels = torch.randn(2, 3), torch.tensor([0, 2])
    sf, tf = [torch.ones(2, 1, 2, 2)], [torch.zeros(2, 1, 2, 2)]
    total, parts = loss(logits, sf, teacher_logits, tf, labels)
    assert parts["loss_feat"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(parts["loss_logit"].item() + 10.0)


def test_vanilla_kd_loss_against_a_hand_computed_value():
    """Two images, two classes. Student logits 0 (probabilities 1/2, 1/2); teacher logits (ln 3, 0) on the first
    image and 0 on the second. At T = 2 the teacher's first row is softmax(ln 3 / 2, 0) = (s / (s + 1), 1 / (s + 1))
    with s = sqrt(3); its second row equals the student's, so its KL is 0. Batch-mean KL times T^2, mixed 50/50 with
    the cross-entropy ln 2 of every image."""
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    s = math.sqrt(3.0)
    p, q = s / (s + 1), 1 / (s + 1)
    kl_first = p * math.log(p / 0.5) + q * math.log(q / 0.5)  # 0.0364...
    expected = 0.5 * math.log(2.0) + 0.5 * 2.0**2 * (kl_first + 0.0) / 2
    total, parts = HintonKDLoss(alpha=0.5, temperature=2.0)(student, teacher, labels)
    assert total.item() == pytest.approx(expected, abs=1e-6)
    assert total.item() == pytest.approx(0.382914, abs=1e-5)  # the same number, written out
    assert parts["loss_logit"].item() == pytest.approx(expected, abs=1e-6)


def test_hdkd_kl_per_logit_is_hinton_per_image_over_the_classes():
    torch.manual_seed(2)
    cls, teacher = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    kd_only = {"alpha": 1.0, "temperature": 3.0}
    deit = logit_distillation_loss(cls, cls, teacher, labels, **kd_only)
    hinton = logit_distillation_loss(cls, cls, teacher, labels, **kd_only, kl_scale="per_image")
    assert hinton.item() == pytest.approx(5 * deit.item(), rel=1e-5)
    batchmean = F.kl_div(
        F.log_softmax(cls / 3, 1), F.log_softmax(teacher / 3, 1), reduction="batchmean", log_target=True
    )
    assert hinton.item() == pytest.approx(9 * batchmean.item(), rel=1e-5)
