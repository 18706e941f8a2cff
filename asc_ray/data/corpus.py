"""The pretraining corpus: what plays AudioSet's part for the PaSST teachers of a run without its checkpoint.

    asc-ray synth --corpus --out DIR [--classes 40] [--clips-per-class 80] [--seed 0]

The report's PaSST teachers are fine-tuned from AudioSet weights: about two million clips of 527 classes, none of
them TAU22's, which is why they know more than any split of it. A run on the synthetic TAU-layout set has no such
outside corpus; this one stands in for it (docs/fidelity.md): sound textures of `classes` classes, each class a
random point of the space the synthetic scenes come from (noise colour, a spectral band, tones, modulation,
transients, level), heard through randomly coloured devices. Nothing of a TAU set is in it: its classes are not the
ten scenes, its random streams are its own (seeded apart from every `asc-ray synth` set's), and it holds no clip of
any split or of test.

Layout: DIR/meta.csv (tab-separated `filename`, `label`), DIR/audio/<label>-<recording>-<clip>.wav (1 s, 44.1 kHz,
mono, PCM_16), DIR/COMPLETE (written last). Same arguments, same bytes.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from asc_ray.data.textures import (
    CHUNK,
    FREQS,
    LOGF,
    REC_BAND_OCT_SD,
    REC_SLOPE_SD,
    SR,
    N,
    bump,
    texture_clips,
)
from asc_ray.errors import AscRayError

STREAM = 0xC0  # the corpus's random streams: np.random.default_rng([STREAM, seed]), apart from any TAU set's
RECORDING_CLIPS = 5  # clips per recording, on average, as in the TAU sets
COMPLETE = "COMPLETE"
META = "meta.csv"


def _log_uniform(rng, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def class_params(rng) -> tuple[tuple, float]:
    """One class: (texture parameters in SCENE_PARAMS' order, level in dBFS), drawn over the ranges the ten
    synthetic scenes span and somewhat beyond."""
    n_tones = rng.choice(3, p=(0.4, 0.3, 0.3))
    tones = tuple(float(f) for f in _log_uniform(rng, 80, 5000, n_tones))
    params = (
        rng.uniform(0.5, 1.9),  # noise slope
        _log_uniform(rng, 80, 5000),  # band centre (Hz)
        rng.uniform(0.8, 2.2),  # band width (octaves)
        rng.uniform(14, 24),  # band gain (dB)
        tones,
        rng.uniform(0.2, 1.0) if tones else 0.0,  # tone level
        _log_uniform(rng, 0.2, 10),  # AM rate (Hz)
        rng.uniform(0.1, 0.7),  # AM depth
        _log_uniform(rng, 0.3, 6),  # transients per second
        _log_uniform(rng, 0.01, 0.25),  # transient decay (s)
        _log_uniform(rng, 200, 5000),  # transient centre (Hz)
    )
    return params, rng.uniform(-31, -16)


def _devices(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A random device per clip, as the TAU devices are made (band edges, a resonance, a tilt, a noise floor):
    responses [n, F] and noise floors [n, 1]."""
    f = np.maximum(FREQS, 1.0)[None]
    hp, lp = _log_uniform(rng, 20, 400, (n, 1)), _log_uniform(rng, 3000, 20000, (n, 1))
    h = 1 / np.sqrt(1 + (hp / f) ** 4) / np.sqrt(1 + (f / lp) ** 8)
    h = h * bump(_log_uniform(rng, 500, 8000, n), np.full(n, 0.5), rng.uniform(-8, 8, n))
    h = h * 10 ** (rng.uniform(-3, 3, (n, 1)) * np.maximum(LOGF - np.log2(1000), 0)[None] / 20)
    return h, _log_uniform(rng, 1e-4, 5e-4, (n, 1))


def generate_corpus(out: Path, classes: int = 40, clips_per_class: int = 80, seed: int = 0) -> Path:
    """Write the corpus to `out` (absent, empty, or a finished corpus made with the same arguments: kept as it is);
    returns `out`."""
    out = Path(out).expanduser()
    if classes < 2 or clips_per_class < 2:
        raise AscRayError(
            f"a pretraining corpus needs >= 2 classes of >= 2 clips, got {classes} x {clips_per_class}",
            fix="use e.g. --classes 40 --clips-per-class 80",
        )
    stamp = f"classes={classes} clips_per_class={clips_per_class} seed={seed}\n"
    if (out / COMPLETE).is_file() and (out / COMPLETE).read_text() == stamp:
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AscRayError(
            "output directory exists and is not empty (nor a corpus made with these arguments)",
            path=out,
            fix="choose a new --out directory or delete this one",
        )
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    rng = np.random.default_rng([STREAM, seed])
    rows = []
    for k in range(classes):
        label = f"class{k:03d}"
        params, level_db = class_params(rng)
        n_rec = max(1, clips_per_class // RECORDING_CLIPS)
        sizes = 1 + rng.multinomial(clips_per_class - n_rec, np.full(n_rec, 1 / n_rec))
        names, jitter = [], []
        for r, size in enumerate(sizes):
            jit = (
                rng.normal(0, REC_SLOPE_SD),
                rng.normal(0, REC_BAND_OCT_SD),
            )  # the recording's own character
            names += [f"audio/{label}-{r:03d}-{j:02d}.wav" for j in range(size)]
            jitter += [jit] * size
        jitter = np.array(jitter)
        for start in range(0, len(names), CHUNK):
            part = names[start : start + CHUNK]
            response, floor = _devices(rng, len(part))

            def colour(x, h=response):
                x[:] = np.fft.irfft(np.fft.rfft(x) * h, n=N)

            clips = texture_clips(rng, params, level_db, jitter[start : start + CHUNK], colour, floor)
            for name, wave in zip(part, clips, strict=True):
                sf.write(tmp / name, wave.astype(np.float32), SR, subtype="PCM_16")
        rows += [(name, label) for name in names]
    with open(tmp / META, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(("filename", "label"))
        w.writerows(rows)
    (tmp / COMPLETE).write_text(stamp)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    print(f"wrote a pretraining corpus to {out}: {len(rows)} clips of {classes} classes (seed {seed})")
    return out


def read_corpus(root: Path) -> tuple[list[str], list[str]]:
    """(filenames, labels) of a finished corpus; an AscRayError naming the folder when it is not one."""
    root = Path(root)
    if not (root / COMPLETE).is_file() or not (root / META).is_file():
        raise AscRayError(
            "not a finished pretraining corpus (no meta.csv or COMPLETE)",
            path=root,
            fix="delete the folder: the pretraining unit makes it again (or `asc-ray synth --corpus --out DIR`)",
        )
    with open(root / META, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["filename"] for r in rows], [r["label"] for r in rows]
