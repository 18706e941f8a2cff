"""Inference with a trained model on any cached file list (e.g. the unlabelled DCASE evaluation set).

A model file saved in fp16 (a student's `model_fp16.pt`, the deployed model) loads as an fp16 model and runs
in fp16 (on CPU as on GPU); an fp32 file runs in fp32."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from asc_ray.data.cache import WaveformStore
from asc_ray.errors import AscRayError
from asc_ray.features import build_frontend
from asc_ray.systems import System
from asc_ray.train import EVAL_BATCH, build_model


def load_trained(system: System, cfg: dict, model_path: str | Path) -> torch.nn.Module:
    """The model in `model_path`, in eval mode, at the file's precision (fp16 weights -> an fp16 model)."""
    model = build_model(system, cfg, pretrained=False)
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as e:
        raise AscRayError(
            f"model file does not fit {system.name}: {str(e).splitlines()[0][:200]}",
            path=model_path,
            fix="re-run the stage that trained it (or --fresh)",
        ) from None
    if any(v.dtype == torch.float16 for v in state.values()):
        model = model.half()  # the fp16 values were copied into fp32 parameters: back to exactly them
    return model.eval()


@torch.no_grad()
def predict_files(
    system: System, cfg: dict, model_path: str | Path, store: WaveformStore, files: Sequence[str]
) -> np.ndarray:
    """Logits [len(files), 10], eval mode, batched on the GPU when there is one, at the model file's precision."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_trained(system, cfg, model_path).to(device)
    dtype = next(model.parameters()).dtype
    frontend = build_frontend(system.frontend).to(device).eval()
    rows = np.array([store.index_of(f) for f in files])
    out = []
    for i in range(0, len(rows), EVAL_BATCH):
        wave = torch.from_numpy(store.rows(rows[i : i + EVAL_BATCH])).to(device)
        out.append(model(frontend(wave).to(dtype)).float().cpu())
    return torch.cat(out).numpy()
