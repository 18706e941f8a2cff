"""Finding what to classify and what with: a model given as a unit folder, a weights file or an MLflow URI;
audio given as files, folders or globs, read at the model's rate."""

from __future__ import annotations

import glob
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from asc_ray.config import load_config
from asc_ray.errors import AscRayError
from asc_ray.io import read_or_raise
from asc_ray.layout import UnitFiles
from asc_ray.predict.classifier import (
    EXAMPLE_MODEL,
    EXAMPLE_UNIT,
    OTHER_SYSTEM_FIX,
    UNIT_SPEC,
    Classifier,
    build_from_spec,
    read_unit_spec,
    unit_spec,
)
from asc_ray.systems import STUDENTS, SYSTEMS

PROGRESS_FROM = 200  # files: show a progress bar from this many on
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".mp3", ".caf", ".w64", ".rf64"}


# ------------------------------------------------------------------------------------ finding a model
def _is_mlflow_uri(s: str) -> bool:
    return s.startswith(("runs:/", "models:/")) or ("://" in s and not Path(s).exists())


def load_classifier(model: str, device: str | None = None, tracking_uri: str | None = None) -> Classifier:
    """A unit folder, an exported weights file with its unit.json beside it, or an MLflow model URI (a runs:/ or
    models:/ one looked up in the store at `tracking_uri`, default MLflow's own)."""
    # MLflow takes seconds to import: only an MLflow model needs it
    from asc_ray.predict.mlflow_model import load_classifier_from_mlflow

    if _is_mlflow_uri(model):
        return load_classifier_from_mlflow(model, device, tracking_uri)
    p = Path(model)
    if p.is_dir():
        if (p / "MLmodel").is_file():  # a downloaded MLflow model folder
            return load_classifier_from_mlflow(str(p), device)
        spec, files = read_unit_spec(p), UnitFiles(p)
        # a student's deployed model is its fp16 export (what results.csv reports); a teacher has model.pt only
        weights = files.model_fp16 if files.model_fp16.is_file() else files.model
        return Classifier.from_weights(spec, weights, device)
    if p.is_file():
        spec = _spec_for_file(p)
        return Classifier.from_weights(spec, p, device)
    raise AscRayError(
        "model not found",
        path=model,
        fix=f"pass a unit folder (e.g. {EXAMPLE_UNIT}), a model_fp16.pt / model.pt, or an MLflow model URI "
        f"(runs:/<run id>/model, {EXAMPLE_MODEL}/<version>)",
    )


def _spec_for_file(path: Path) -> dict:
    """A weights file: its folder's unit.json, else the student architecture its tensors fit."""
    try:
        return read_unit_spec(path.parent)
    except AscRayError:
        pass
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    state = read_or_raise(path, load, "model file", OTHER_SYSTEM_FIX, "not a model file: {error}")
    cfg = load_config("full")  # the report's widths
    by_model = {}  # each student architecture, as its first student (kd_ensemble, tfs, baseline: one network)
    for name in STUDENTS:
        by_model.setdefault(SYSTEMS[name].model, SYSTEMS[name])
    for system in by_model.values():
        spec = unit_spec(system, cfg)
        model = build_from_spec(spec)
        if isinstance(state, dict) and all(
            k in state and tuple(v.shape) == tuple(state[k].shape) for k, v in model.state_dict().items()
        ):
            return spec
    raise AscRayError(
        f"weights fit no student architecture ({', '.join(STUDENTS)}) and there is no {UNIT_SPEC} beside them",
        path=path,
        fix=f"keep the file in its unit folder (beside {UNIT_SPEC}) or pass the unit folder",
    )


# -------------------------------------------------------------------------------------------- audio
def find_audio(args: Sequence[str]) -> list[Path]:
    """Files, folders (searched recursively for audio files) and globs -> file list, in order, no repeats."""
    found: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise AscRayError(
                    "folder holds no audio files",
                    path=p,
                    fix=f"pass a folder with {', '.join(sorted(AUDIO_SUFFIXES))} files",
                )
            found.extend(files)
        elif p.exists():
            found.append(p)
        elif glob.has_magic(a):
            files = sorted(Path(f) for f in glob.glob(a, recursive=True) if Path(f).is_file())
            if not files:
                raise AscRayError("pattern matches no file", path=a, fix="check the pattern (quote it)")
            found.extend(files)
        else:
            raise AscRayError("audio file not found", path=a, fix="check the path")
    return list(dict.fromkeys(found))


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any file soundfile reads -> float32 mono at sample_rate (channels averaged, resampled)."""
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for bad files
        raise AscRayError(
            f"cannot read audio: {str(e).splitlines()[0][:200]}",
            path=path,
            fix="pass a file soundfile can read (WAV, FLAC, OGG, ...)",
        ) from None
    if wave.shape[0] == 0:
        raise AscRayError("audio file has no samples", path=path, fix="pass a non-empty recording")
    wave = wave.mean(axis=1)
    if not np.isfinite(wave).all():
        raise AscRayError("audio contains NaN or infinite samples", path=path, fix="pass a clean recording")
    if sr != sample_rate:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, sample_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def classify_files(
    clf: Classifier, files: Sequence[Path], progress: bool | None = None
) -> tuple[list[Path], np.ndarray, list[tuple[Path, AscRayError]]]:
    """(classified files, probabilities [n, 10], failures): unreadable files are skipped and reported."""
    show = len(files) >= PROGRESS_FROM if progress is None else progress
    bar = tqdm(total=len(files), desc="classifying", unit="file", file=sys.stderr, disable=not show)
    ok, probs, failed = [], [], []
    chunk = 64  # files read in parallel, then classified together
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(files), chunk):
            names = files[start : start + chunk]

            def read(f, sr=clf.sample_rate):
                try:
                    return read_audio(f, sr)
                except AscRayError as e:
                    return e

            waves = list(pool.map(read, names))
            good = [(f, w) for f, w in zip(names, waves, strict=True) if not isinstance(w, AscRayError)]
            failed += [(f, w) for f, w in zip(names, waves, strict=True) if isinstance(w, AscRayError)]
            bar.update(len(names) - len(good))
            if good:
                probs.append(clf.probabilities([w for _, w in good], progress=bar))
                ok += [f for f, _ in good]
    bar.close()
    return ok, (np.concatenate(probs) if probs else np.zeros((0, 10))), failed
