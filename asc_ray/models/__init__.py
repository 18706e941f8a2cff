"""The model architectures, one registry entry each: what builds the network, how it trains (its optimizer and
schedule, its config section), and what it costs. Systems (asc_ray.systems) name an entry as their `model`.

Adding an architecture: an entry in ARCHITECTURES (and its module here when the network is new: the network and
its settings section), its section or width in configs/full.yaml, and the systems that use it in
asc_ray/systems.py (docs/architecture.md). The config schema, the resume keys and asc-ray-predict follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import create_model
from torch import nn

from asc_ray.data.tau import N_CLASSES
from asc_ray.errors import AscRayError
from asc_ray.models.bcbl import BcblSettings, bcbl
from asc_ray.models.passt import PasstSettings, passt
from asc_ray.optim import adam_exp_warmup_linear_down, adamw_cosine
from asc_ray.schema import Int, Section, trains


@dataclass(frozen=True)
class Architecture:
    section: str  # its config section: the training settings (epochs, lr, ...) and what `build` reads
    settings: type[Section]  # that section's schema
    # (config, model name, pretrained: True = its own pretrained weights where it has any, False = none, or a
    # checkpoint path to start from) -> the network
    build: Callable[[Any, str, bool | Path], nn.Module]
    optimizer: Callable  # (model, settings, steps_per_epoch, epochs) -> (optimizer, scheduler), asc_ray.optim
    # time per clip and epoch relative to a 32-BCBL at 44.1 kHz on a GPU (docs/benchmarks.md, H200: PaSST-S 2,177
    # clips/s, 32-BCBL 6,248): the scheduler launches the longest first and finds the critical path by it
    cost: float
    channels_last: bool  # the faster memory format for it on CPU and GPU (train.channels_last=auto)
    width: bool = False  # its width (base channels) is config channels.<model> (the N of an N-BCBL)


def _bcbl(cfg, model: str, pretrained: bool) -> nn.Module:
    return bcbl(getattr(cfg.channels, model), N_CLASSES)  # width: config channels.<model>


def _passt(cfg, model: str, pretrained: bool | Path) -> nn.Module:
    start = pretrained if isinstance(pretrained, Path) else cfg.passt.pretrained and pretrained
    return passt(pretrained=start, size=cfg.passt.size, n_classes=N_CLASSES)


ARCHITECTURES: dict[str, Architecture] = {
    "passt": Architecture(
        "passt", PasstSettings, _passt, adam_exp_warmup_linear_down, cost=2.9, channels_last=False
    ),
    "bcbl32": Architecture(
        "bcbl", BcblSettings, _bcbl, adamw_cosine, cost=1.0, channels_last=True, width=True
    ),
    "bcbl24": Architecture(
        "bcbl", BcblSettings, _bcbl, adamw_cosine, cost=0.8, channels_last=True, width=True
    ),
}


def channels_section() -> type[Section]:
    """Config section `channels:`: a key per architecture with a width, read by the systems of that model."""
    widths = {m: (Int, trains(when={"model": m}, ge=1)) for m, a in ARCHITECTURES.items() if a.width}
    return create_model("Channels", __base__=Section, **widths)


def get_architecture(model: str) -> Architecture:
    if model not in ARCHITECTURES:
        raise AscRayError(
            f"unknown model architecture '{model}'",
            path="asc_ray/models/__init__.py",
            fix="register it in ARCHITECTURES, or choose from " + ", ".join(ARCHITECTURES),
        )
    return ARCHITECTURES[model]


def build_model(model: str, cfg, pretrained: bool | Path = True) -> nn.Module:
    """The network `model` as `cfg` configures it. pretrained=False: an empty shell to load trained weights
    into (no AudioSet checkpoint lookup); a path: a checkpoint to start from (a pretraining unit's weights)."""
    return get_architecture(model).build(cfg, model, pretrained)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "bcbl",
    "build_model",
    "channels_section",
    "get_architecture",
    "passt",
]
