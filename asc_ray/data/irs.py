"""Device impulse responses (MicIRP-like folder of WAVs) for the DIR augmentation.

Each file may have any length, channel count and sample rate: it is mixed down to mono, resampled to the
model's rate and normalised to unit energy once, so that convolving a clip with any IR keeps its loudness
comparable (the augmentation changes colour, not level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asc_ray.errors import AscRayError

EXPECTED = "a folder of device impulse responses as .wav files (e.g. the 66 MicIRP files)"


def load_irs(folder: str | Path, sample_rate: int) -> list[torch.Tensor]:
    """float32 mono IRs [length] at `sample_rate`, each with sum of squares 1, in file-name order."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AscRayError(
            "impulse response folder not found",
            path=folder,
            fix=f"point data.irs_dir (default <data-dir>/irs) at {EXPECTED}, or leave the *_dir teachers out of teachers.systems",
        )
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav")
    if not paths:
        raise AscRayError(
            "impulse response folder has no .wav file",
            path=folder,
            fix=f"point data.irs_dir (default <data-dir>/irs) at {EXPECTED}, or leave the *_dir teachers out of teachers.systems",
        )
    irs = []
    for p in paths:
        fix = f"replace or remove this file; the folder must hold only usable IRs ({EXPECTED})"
        try:
            ir, sr = sf.read(p, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as e:
            raise AscRayError(
                f"cannot read impulse response (corrupt or not a WAV): {e}", path=p, fix=fix
            ) from None
        ir = torch.from_numpy(np.ascontiguousarray(ir.mean(axis=1)))
        if sr != sample_rate and len(ir) > 0:
            ir = AF.resample(ir, sr, sample_rate)
        energy = float(torch.sum(ir.double() ** 2)) if len(ir) else 0.0
        if not np.isfinite(energy) or energy <= 0.0:
            raise AscRayError("impulse response is empty, silent or not finite", path=p, fix=fix)
        irs.append((ir.double() / energy**0.5).float())
    return irs
