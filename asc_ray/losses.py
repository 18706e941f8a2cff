"""Distillation losses of the report.

kd_loss, eq. (1):  (1 - lam) * H(softmax(zs), y) + lam * T^2 * KL(softmax(zt/T) || softmax(zs/T)).
    kl_reduction="batchmean" is eq. (1) as written: KL summed over classes, mean over the batch.
    kl_reduction="mean" is the reference code's scale, at which lam = 0.98 was chosen:
    KLDivLoss(reduction="none")(...).mean() averages over batch AND classes, i.e. eq. (1)'s KL / C.
focusnet_loss, eqs. (2)-(8) (teacher-informed confusing class instruction):
    d = softmax(zs) - softmax(zt);  y_hat = softmax(d + zs);  L_cls = H(y, y_hat)
    l'_n = [zt_n > 0];  l''_n = min(1, l'_n + y_n);  l = l'' / sum(l'')
    R_att = H(l, softmax(zs));  R_ent = -sum softmax(zs) log softmax(zs)
    L = L_cls + alpha * R_att - beta * R_ent
mask="reference" is the code that made Table 3's TFS column (SNTL's "Author's Version", helpers/fpLoss.py): mask
    softmax(zt / 2) > 1/C and label smoothing 0.1 in L_cls; mask="report" is eq. (4) as printed.
Otherwise all losses: per-sample sums over classes, mean over the batch. Targets: int64 indices [B] or soft [B, C].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from asc_ray.schema import Float, Section, trains

# reference code's settings
KD_LAMBDA = 0.98  # weight of the distillation term (label weight 0.02)
KD_TEMPERATURE = 2.0
REF_MASK_TEMPERATURE = 2.0
REF_LABEL_SMOOTHING = 0.1
KL_REDUCTIONS = ("batchmean", "mean")


def _soft_targets(target: Tensor, n_classes: int) -> Tensor:
    if target.dim() == 1:
        return F.one_hot(target.long(), n_classes).float()
    if target.dim() == 2 and target.shape[1] == n_classes:
        return target.float()
    raise ValueError(
        f"target must be class indices [B] or soft targets [B, {n_classes}], got {tuple(target.shape)}"
    )


def _cross_entropy(log_probs: Tensor, y: Tensor) -> Tensor:
    """H(y, p) = -sum_c y_c log p_c per sample, mean over batch."""
    return -(y * log_probs).sum(dim=1).mean()


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    lam: float = KD_LAMBDA,
    temperature: float = KD_TEMPERATURE,
    *,
    kl_reduction: str = "batchmean",
) -> Tensor:
    """Eq. (1). kl_reduction "batchmean": KL summed over classes, mean over the batch (eq. (1) literally);
    "mean": mean over batch and classes (the reference code's scale, see the module doc)."""
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    zs, zt = student_logits.float(), teacher_logits.detach().float()
    y = _soft_targets(target, zs.shape[1])
    label_loss = _cross_entropy(F.log_softmax(zs, dim=1), y)
    log_ps_t = F.log_softmax(zs / temperature, dim=1)
    log_pt_t = F.log_softmax(zt / temperature, dim=1)
    kl_terms = log_pt_t.exp() * (log_pt_t - log_ps_t)  # [B, C]
    kl = kl_terms.sum(dim=1).mean() if kl_reduction == "batchmean" else kl_terms.mean()
    return (1.0 - lam) * label_loss + lam * temperature**2 * kl


def focusnet_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    mask: str = "reference",
) -> Tensor:
    """Eqs. (2)-(8); mask "reference" (default, the code behind Table 3) or "report" (see module docstring)."""
    if mask not in ("report", "reference"):
        raise ValueError(f"focusnet mask must be 'report' or 'reference', got {mask!r}")
    zs, zt = student_logits.float(), teacher_logits.detach().float()
    n_classes = zs.shape[1]
    y = _soft_targets(target, n_classes)
    log_ps = F.log_softmax(zs, dim=1)
    ps = log_ps.exp()
    # eqs. (2)-(4): push the student's logits by its disagreement with the teacher
    d = ps - F.softmax(zt, dim=1)
    log_y_hat = F.log_softmax(d + zs, dim=1)
    y_cls = y
    if mask == "reference":
        y_cls = y * (1 - REF_LABEL_SMOOTHING) + REF_LABEL_SMOOTHING / n_classes
    l_cls = _cross_entropy(log_y_hat, y_cls)
    # eqs. (5)-(6): attention target = the teacher's "confusing" classes plus the true class
    if mask == "report":
        l1 = (zt > 0).float()
    else:
        l1 = (F.softmax(zt / REF_MASK_TEMPERATURE, dim=1) > 1.0 / n_classes).float()
    l2 = torch.clamp(l1 + y, max=1.0)
    att = l2 / l2.sum(dim=1, keepdim=True)
    # eqs. (7)-(8)
    r_att = _cross_entropy(log_ps, att)
    r_ent = -(ps * log_ps).sum(dim=1).mean()
    return l_cls + alpha * r_att - beta * r_ent


def soft_cross_entropy(student_logits: Tensor, target: Tensor) -> Tensor:
    """H(y, softmax(z)) with soft targets (mixup mixes them), mean over the batch: the plain label loss."""
    return torch.sum(-target * F.log_softmax(student_logits, dim=-1), dim=-1).mean()


class KdSettings(Section):
    """Config section `kd:` (configs/full.yaml), eq. (1)."""

    lam: Float = trains(ge=0, le=1)
    temperature: Float = trains(gt=0)
    kl_reduction: Literal["mean", "batchmean"] = trains()


class FocusNetSettings(Section):
    """Config section `focusnet:` (configs/full.yaml), eqs. (2)-(8)."""

    alpha: Float = trains(ge=0)
    beta: Float = trains(ge=0)
    mask: Literal["report", "reference"] = trains()


def _ce(z: Tensor, y: Tensor, zt: Tensor | None, cfg) -> Tensor:
    return soft_cross_entropy(z, y)


def _kd(z: Tensor, y: Tensor, zt: Tensor | None, cfg) -> Tensor:
    k = cfg.kd
    return kd_loss(z, zt, y, lam=k.lam, temperature=k.temperature, kl_reduction=k.kl_reduction)


def _focusnet(z: Tensor, y: Tensor, zt: Tensor | None, cfg) -> Tensor:
    f = cfg.focusnet
    return focusnet_loss(z, zt, y, alpha=f.alpha, beta=f.beta, mask=f.mask)


@dataclass(frozen=True)
class Loss:
    """A loss a system trains with (System.loss), one registry entry: (student logits, soft targets, teacher
    logits or None, config) -> loss. A loss with settings reads the config section of its own name, which the
    config schema takes from here and which puts them in its systems' resume keys."""

    fn: Callable[[Tensor, Tensor, Tensor | None, object], Tensor]
    settings: type[Section] | None = None  # its section's keys (kd:, focusnet:)

    def __call__(self, z: Tensor, y: Tensor, zt: Tensor | None, cfg) -> Tensor:
        return self.fn(z, y, zt, cfg)


LOSSES = {"ce": Loss(_ce), "kd": Loss(_kd, KdSettings), "focusnet": Loss(_focusnet, FocusNetSettings)}
