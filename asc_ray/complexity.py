"""Model complexity the DCASE way (the `nessi` helper: torchinfo total_params / total_mult_adds for one clip),
the student limits of DCASE 2024 Task 1, and the fp16 export of a student's weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchinfo
from torch import nn

from asc_ray.errors import AscRayError
from asc_ray.io import atomic_torch_save

MAX_PARAM_BYTES = 128_000  # 128 kB of parameters at the deployed precision
MAX_MACS = 30_000_000  # per 1 s clip
BYTES_PER_PARAM = 2  # deployed in fp16


@dataclass
class Complexity:
    params: int
    macs: int
    bytes_fp16: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def measure(model: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """Params and MACs for one input of `input_shape` (without batch dim, e.g. (1, 256, 65)); the model's
    train/eval mode is restored afterwards."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    try:
        s = torchinfo.summary(model, input_size=shape, device=device, verbose=0, mode="eval")
    finally:
        model.train(was_training)
    return Complexity(
        params=int(s.total_params),
        macs=int(s.total_mult_adds),
        bytes_fp16=int(s.total_params) * BYTES_PER_PARAM,
    )


def check_student(c: Complexity, name: str = "student") -> None:
    """Raise AscRayError when the model breaks the challenge's complexity limits."""
    problems = []
    if c.bytes_fp16 > MAX_PARAM_BYTES:
        problems.append(f"{c.params:,} parameters = {c.bytes_fp16:,} bytes at fp16 > {MAX_PARAM_BYTES:,}")
    if c.macs > MAX_MACS:
        problems.append(f"{c.macs:,} MACs per 1 s clip > {MAX_MACS:,}")
    if problems:
        raise AscRayError(
            f"model '{name}' is over the DCASE 2024 Task 1 complexity limits: " + "; ".join(problems),
            path=name,
            fix="use a smaller student (e.g. fewer base channels for N-BCBL: 32 gives 61,148 params and "
            "29.4 M MACs) or a front-end with fewer frames per second.",
        )


def export_fp16(model: nn.Module, path: str | Path) -> Path:
    """Save the model's state_dict in half precision (floating tensors only; e.g. BN's int counters stay)
    atomically: a temporary file in the same folder, then rename, so a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    atomic_torch_save(path, state)
    return path
