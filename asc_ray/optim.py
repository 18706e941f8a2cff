"""Optimizers and learning-rate schedules, stepped once per optimizer step. An architecture's registry entry
(asc_ray.models) names the one it trains with; each takes (model, settings, steps_per_epoch, epochs) and
returns (optimizer, scheduler)."""

from __future__ import annotations

import math

import torch


def adamw_cosine(model: torch.nn.Module, h, steps_per_epoch: int, epochs: int):
    """AdamW, linear warm-up over `h.warmup_steps` steps, then a cosine down to 0 (the DCASE 2024 baseline's
    schedule; 100 warm-up steps in the report, 2000 in the baseline recipe)."""
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=h.lr, weight_decay=h.weight_decay)
    warm = max(1, min(h.warmup_steps, total // 2))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def adam_warmup_linear_down(model: torch.nn.Module, h, steps_per_epoch: int, epochs: int):
    """Adam, linear warm-up over `h.warmup_epochs` epochs, then a linear decay to 1 % at the last step."""
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=h.lr, weight_decay=h.weight_decay)
    warm = max(1, h.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.01, 1.0 - 0.99 * (step - warm) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
