"""Optimizers and learning-rate schedules, stepped once per optimizer step. An architecture's registry entry
(asc_ray.models) names the one it trains with; each takes (model, settings, steps_per_epoch, epochs) and
returns (optimizer, scheduler)."""

from __future__ import annotations

import math

import torch


def adamw_cosine(model: torch.nn.Module, h, steps_per_epoch: int, epochs: int):
    """AdamW, linear warm-up over `h.warmup_steps` steps, then a cosine down to 0 (the DCASE 2024 baseline's
    schedule; 100 warm-up steps in the report, 2000 in the baseline recipe, at every split: a split too small
    for them is said in the unit's log, not shortened)."""
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=h.lr, weight_decay=h.weight_decay)
    warm = max(1, h.warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def exp_warmup_linear_down(
    epoch: int, warmup: int, rampdown_start: int, rampdown_epochs: int, last: float
) -> float:
    """CP-JKU's PaSST schedule (helpers/lr_schedule.py of their DCASE code, as SNTL's teachers used it): an
    exponential warm-up over `warmup` epochs (exp(-5 (1 - e / warmup)^2), e at least 0.5), flat to
    `rampdown_start`, a linear ramp down to `last` over `rampdown_epochs` epochs, then flat at `last`."""
    up = 1.0
    if epoch < warmup:
        e = min(max(epoch, 0.5), warmup)
        up = math.exp(-5.0 * (1.0 - e / warmup) ** 2)
    if epoch <= rampdown_start:
        down = 1.0
    elif epoch - rampdown_start < rampdown_epochs:
        down = last + (1.0 - last) * (rampdown_epochs - epoch + rampdown_start) / rampdown_epochs
    else:
        down = last
    return up * down


def adam_exp_warmup_linear_down(model: torch.nn.Module, h, steps_per_epoch: int, epochs: int):
    """Adam with exp_warmup_linear_down, stepped per epoch as the reference's Lightning scheduler is (the factor
    of epoch e holds for all of its steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=h.lr, weight_decay=h.weight_decay)
    per = max(1, steps_per_epoch)

    def factor(step: int) -> float:
        return exp_warmup_linear_down(
            step // per, h.warmup_epochs, h.rampdown_start, h.rampdown_epochs, h.last_lr
        )

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
