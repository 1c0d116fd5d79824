"""AdaCos: the fixed scale s="auto" on every scaled head, and the dynamic scale of AdaCosLoss
against a float64 transcription of the paper's update (Zhang et al., CVPR 2019, eq. 15-16)."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import (
    AdaCosLoss,
    AdaFaceLoss,
    ArcFaceLoss,
    ArcFaceLossWithMLP,
    COCOLoss,
    CombinedMarginHead,
    CosFaceLoss,
    CurricularFaceLoss,
    MagFaceLoss,
    NormFaceLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    SVXSoftmaxLoss,
    get_loss,
)
from tests.losses.float64_heads import cosines, margin_head_loss, target_theta

D, C = 6, 7

SCALED = {
    "normface": lambda s: NormFaceLoss(D, C, s=s),
    "arcface": lambda s: ArcFaceLoss(D, C, s=s),
    "arcface_mlp": lambda s: ArcFaceLossWithMLP(D, C, [5], s=s),
    "cosface": lambda s: CosFaceLoss(D, C, s=s),
    "sphereface": lambda s: SphereFaceLoss(D, C, s=s),
    "combined_margin": lambda s: CombinedMarginHead(D, C, 0.9, 0.3, 0.1, s=s),
    "subcenter_arcface": lambda s: SubCenterArcFaceLoss(D, C, 2, s=s),
    "curricularface": lambda s: CurricularFaceLoss(D, C, s=s),
    "adaface": lambda s: AdaFaceLoss(D, C, s=s),
    "magface": lambda s: MagFaceLoss(D, C, s=s, l_a=0.5, u_a=10.0),
    "svx_softmax": lambda s: SVXSoftmaxLoss(D, C, s=s, t=1.2),
    "coco": lambda s: COCOLoss(D, C, alpha=s),
}


def paper_fixed_scale(num_classes: int) -> float:
    """s_f = sqrt(2) * log(C - 1), the paper's eq. 13."""
    return 2**0.5 * math.log(num_classes - 1)


@pytest.mark.parametrize("name", sorted(SCALED))
def test_auto_scale_is_the_fixed_adacos_scale(name):
    auto, fixed = SCALED[name]("auto").eval(), SCALED[name](paper_fixed_scale(C)).eval()
    scale_of = (lambda h: h.arcface.s) if name == "arcface_mlp" else (lambda h: h.s)
    assert scale_of(auto) == pytest.approx(paper_fixed_scale(C), rel=1e-15)
    fixed.load_state_dict(auto.state_dict())
    x, y = torch.randn(9, D), torch.randint(0, C, (9,))
    torch.testing.assert_close(auto(x, y), fixed(x, y))


def test_auto_scale_needs_three_classes_and_other_strings_are_refused():
    with pytest.raises(ValueError, match=r"`s='auto'` needs `num_classes` >= 3.*got 2"):
        ArcFaceLoss(D, 2, s="auto")
    with pytest.raises(TypeError, match=r"`s` must be a real number or 'auto', got str 'big'"):
        CosFaceLoss(D, C, s="big")
    with pytest.raises(TypeError, match=r"`alpha` must be a real number or 'auto'"):
        COCOLoss(D, C, alpha="fast")


def paper_scale_step(x, w, y, previous):
    """One dynamic step in float64, written out: B_avg over the non-target logits at the
    previous scale, the median target angle (lower middle for even N), the new scale."""
    cos = cosines(x, w)
    n = x.shape[0]
    b_total = 0.0
    for i in range(n):
        for k in range(w.shape[0]):
            if k != int(y[i]):
                b_total += math.exp(previous * float(cos[i, k]))
    b_avg = b_total / n
    angles = sorted(float(a) for a in target_theta(x, w, y))
    theta_med = angles[(n - 1) // 2]
    return math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))


@pytest.mark.parametrize("n", [8, 9])
def test_dynamic_scale_follows_the_papers_update(n):
    torch.manual_seed(1)
    head = AdaCosLoss(D, C).double()
    assert float(head.scale) == pytest.approx(paper_fixed_scale(C), rel=1e-15)
    w = head.weight.detach()
    expected_scale = paper_fixed_scale(C)
    for _ in range(4):
        x, y = torch.randn(n, D, dtype=torch.float64) * 2.0, torch.randint(0, C, (n,))
        x = x.requires_grad_()
        loss = head(x, y)
        expected_scale = paper_scale_step(x.detach(), w, y, expected_scale)
        assert float(head.scale) == pytest.approx(expected_scale, rel=1e-12)
        assert float(head.last_logs["adacos_s"]) == pytest.approx(expected_scale, rel=1e-12)
        # The loss of this batch uses the updated scale, no margin.
        x_ref = x.detach().clone().requires_grad_()
        reference = margin_head_loss(x_ref, w, y, expected_scale, torch.cos).mean()
        torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
        loss.backward()
        reference.backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)


def test_eval_keeps_the_scale_and_logits_use_it():
    head = AdaCosLoss(D, C).double()
    x, y = torch.randn(8, D, dtype=torch.float64), torch.randint(0, C, (8,))
    head(x, y)
    trained = float(head.scale)
    head.eval()
    head(x, y)
    assert float(head.scale) == trained
    torch.testing.assert_close(head.logits(x), trained * cosines(x, head.weight.detach()))
    restored = AdaCosLoss(D, C).double()
    restored.load_state_dict(head.state_dict())  # the scale travels with the checkpoint
    assert float(restored.scale) == trained


def test_registered_with_its_config_name():
    head = get_loss("adacos", in_features=D, num_classes=C)
    assert isinstance(head, AdaCosLoss) and head.weight.shape == (C, D)
