"""Reading one TAU clip: soundfile + the checks that turn a bad file into a clear message.

Multi-channel files are mixed down to mono (mean over channels) rather than refused: TAU clips are
mono, and a stereo copy of one still carries the scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from asc_ray.errors import AscRayError

CLIP_SECONDS = 1.0
SOURCE_SAMPLE_RATE = 44100
LENGTH_TOLERANCE = 1  # samples; a clip one sample long or short is padded / trimmed, not refused

REPLACE = "replace the file with a good copy from the dataset archive (re-extract it)"


def read_wav(
    path: Path, expected_sr: int = SOURCE_SAMPLE_RATE, expected_seconds: float | None = CLIP_SECONDS
) -> np.ndarray:
    """float32 mono waveform [n] of a WAV file; AscRayError naming the file when it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise AscRayError(
            "audio file not found",
            path=path,
            fix="check that the data directory is complete (audio/ as in meta.csv); " + REPLACE,
        )
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as e:
        raise AscRayError(
            f"cannot read audio file (corrupt, truncated or not a WAV): {e}", path=path, fix=REPLACE
        ) from None
    if wave.shape[0] == 0:
        raise AscRayError("audio file is empty (no samples)", path=path, fix=REPLACE)
    if sr != expected_sr:
        raise AscRayError(
            f"audio file has sample rate {sr} Hz, expected {expected_sr} Hz",
            path=path,
            fix=f"use the original TAU22 clips ({expected_sr} Hz); do not resample them yourself "
            "(asc-ray resamples in its cache)",
        )
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(wave).all():
        raise AscRayError("audio file contains NaN or infinite samples", path=path, fix=REPLACE)
    if expected_seconds is not None:
        n = round(expected_seconds * expected_sr)
        if abs(len(wave) - n) > LENGTH_TOLERANCE:
            raise AscRayError(
                f"audio file has {len(wave)} samples ({len(wave) / sr:.4f} s), expected {n} "
                f"({expected_seconds} s at {expected_sr} Hz): truncated or not a TAU clip",
                path=path,
                fix=REPLACE,
            )
        wave = np.pad(wave, (0, n - len(wave))) if len(wave) < n else wave[:n]
    return np.ascontiguousarray(wave, dtype=np.float32)
