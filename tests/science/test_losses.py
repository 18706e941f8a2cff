"""kd_loss and focusnet_loss against values computed by hand (numpy, step by step)."""

import math

import numpy as np
import pytest
import torch

from asc_ray.losses import focusnet_loss, kd_loss

ZS = np.array([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]])  # student logits, B=2, C=3
ZT = np.array([[1.0, 0.3, -2.0], [-0.2, 2.0, 0.4]])  # teacher logits
Y_IDX = np.array([0, 2])


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def test_kd_trivial_case_by_hand():
    # equal logits, 2 classes: CE = log 2, KL = 0 -> (1 - lam) * log 2
    z = torch.zeros(1, 2)
    assert kd_loss(z, z, torch.tensor([0]), lam=0.98, temperature=2.0).item() == pytest.approx(
        0.02 * math.log(2)
    )


def test_kd_loss_matches_eq1_hard_and_soft_targets():
    lam, T = 0.98, 2.0
    y = np.eye(3)[Y_IDX]
    # label term: CE of softmax(zs) against y, per sample, then mean
    ce = -(y * np.log(softmax(ZS))).sum(axis=1).mean()
    # distillation term: KL(p_t || p_s) at temperature T, summed over classes, mean over batch
    pt, ps = softmax(ZT / T), softmax(ZS / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean()
    expected = (1 - lam) * ce + lam * T**2 * kl
    got = kd_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), lam=lam, temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-5)

    # soft targets (a mixup of classes 0 and 2 at 0.7 / 0.3)
    y_soft = np.array([[0.7, 0.0, 0.3], [0.3, 0.0, 0.7]])
    ce_soft = -(y_soft * np.log(softmax(ZS))).sum(axis=1).mean()
    expected_soft = (1 - lam) * ce_soft + lam * T**2 * kl
    got_soft = kd_loss(t(ZS), t(ZT), t(y_soft), lam=lam, temperature=T)
    assert got_soft.item() == pytest.approx(expected_soft, rel=1e-5)
    assert got_soft.item() != pytest.approx(got.item(), rel=1e-3)


def test_kd_gradient_flows_to_student_only():
    zs = t(ZS).requires_grad_()
    zt = t(ZT).requires_grad_()
    kd_loss(zs, zt, torch.tensor(Y_IDX)).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def focus_by_hand(zs, zt, y, alpha=1.0, beta=1.0, mask="report"):
    C = zs.shape[1]
    ps, pt = softmax(zs), softmax(zt)
    d = ps - pt  # eq. (2)
    y_hat = softmax(d + zs)
    y_cls = y if mask == "report" else y * 0.9 + 0.1 / C
    l_cls = -(y_cls * np.log(y_hat)).sum(axis=1)  # eq. (3)
    if mask == "report":
        l1 = (zt > 0).astype(float)  # eq. (4)
    else:
        l1 = (softmax(zt / 2) > 1 / C).astype(float)
    l2 = np.minimum(1.0, l1 + y)  # eq. (5)
    l_att = l2 / l2.sum(axis=1, keepdims=True)  # eq. (6)
    r_att = -(l_att * np.log(ps)).sum(axis=1)  # eq. (7)
    r_ent = -(ps * np.log(ps)).sum(axis=1)  # eq. (8)
    return (l_cls + alpha * r_att - beta * r_ent).mean()


def test_focusnet_trivial_case_by_hand():
    # zs = zt = 0, C = 2, y = class 0: y_hat = (.5, .5) -> L_cls = log 2; mask empty -> l = (1, 0) ->
    # R_att = log 2; R_ent = log 2; L = log 2 + log 2 - log 2 = log 2
    z = torch.zeros(1, 2)
    assert focusnet_loss(z, z, torch.tensor([0]), mask="report").item() == pytest.approx(math.log(2))


def test_focusnet_report_form_hard_targets():
    y = np.eye(3)[Y_IDX]
    # sample 0: teacher mask (1, 1, 0), y = (1, 0, 0) -> l = (.5, .5, 0); sample 1: mask (0, 1, 1) + y(2) -> (0, .5, .5)
    expected = focus_by_hand(ZS, ZT, y)
    got = focusnet_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), mask="report")
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_focusnet_soft_targets_and_weights():
    y_soft = np.array([[0.6, 0.0, 0.4], [0.0, 0.25, 0.75]])
    expected = focus_by_hand(ZS, ZT, y_soft, alpha=0.5, beta=0.3)
    got = focusnet_loss(t(ZS), t(ZT), t(y_soft), alpha=0.5, beta=0.3, mask="report")
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_focusnet_reference_mask_is_the_default_differs_and_matches_its_form():
    y = np.eye(3)[Y_IDX]
    expected = focus_by_hand(ZS, ZT, y, mask="reference")
    got = focusnet_loss(t(ZS), t(ZT), torch.tensor(Y_IDX))  # the default: the code behind Table 3
    assert got.item() == pytest.approx(expected, rel=1e-5)
    report = focusnet_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), mask="report").item()
    assert got.item() != pytest.approx(report, rel=1e-4)
    with pytest.raises(ValueError):
        focusnet_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), mask="paper")


def test_kd_kl_reduction_mean_is_the_reference_scale():
    """kl_reduction="mean": the reference's KLDivLoss(reduction="none")(...).mean() * T^2 with label weight
    1 - lam, i.e. KL averaged over batch AND classes; "batchmean" (the default) is eq. (1) literally."""
    lam, T = 0.98, 2.0
    y = np.eye(3)[Y_IDX]
    ce = -(y * np.log(softmax(ZS))).sum(axis=1).mean()
    pt, ps = softmax(ZT / T), softmax(ZS / T)
    kl_terms = pt * (np.log(pt) - np.log(ps))  # [B, C]
    mean = (1 - lam) * ce + lam * T**2 * kl_terms.mean()
    batchmean = (1 - lam) * ce + lam * T**2 * kl_terms.sum(axis=1).mean()
    assert kd_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), lam, T, kl_reduction="mean").item() == pytest.approx(
        mean, rel=1e-5
    )
    assert kd_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), lam, T).item() == pytest.approx(batchmean, rel=1e-5)
    # the reference's own expression, with torch's KLDivLoss
    ref = (1 - lam) * torch.nn.functional.cross_entropy(t(ZS), torch.tensor(Y_IDX)) + lam * T**2 * (
        torch.nn.KLDivLoss(reduction="none", log_target=True)(
            torch.log_softmax(t(ZS) / T, 1), torch.log_softmax(t(ZT) / T, 1)
        ).mean()
    )
    got = kd_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), lam, T, kl_reduction="mean")
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="kl_reduction"):
        kd_loss(t(ZS), t(ZT), torch.tensor(Y_IDX), kl_reduction="sum")
