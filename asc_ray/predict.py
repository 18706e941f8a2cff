"""Use a trained model: classify audio files, a cached file list, or raw waveforms.

One inference path for everything that runs a trained model outside training: the pipeline's
evaluation-set export (`predict_files`), the command line below, and the MLflow model
(`asc_ray.mlflow_model`) all go through `Classifier` (model + front-end, eval mode, batched, GPU when
there is one).

    python -m asc_ray.predict MODEL AUDIO... [--out predictions.csv]     (also: asc-ray-predict)

MODEL is a unit folder (`<output>/students/split100/kd_ensemble`), an MLflow model URI (`runs:/<id>/model`,
`models:/asc-ray-kd_ensemble-split100/1`) or an exported fp16 file (`model_fp16.pt`). What a model is
(system, architecture, sample rate) comes from the `unit.json` that training writes beside the weights.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asc_ray.data.cache import WaveformStore
from asc_ray.errors import AscRayError, run_cli
from asc_ray.features import build_frontend, frontend_sample_rate
from asc_ray.systems import STUDENTS, SYSTEMS, System, get_system

UNIT_SPEC = "unit.json"  # what a unit folder (and the MLflow model) says about its model
SPEC_VERSION = 1
BATCH = 256  # windows per forward pass (the training loop's EVAL_BATCH)
PROGRESS_FROM = 200  # files: show a progress bar from this many on
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".mp3", ".caf", ".w64", ".rf64"}
OTHER_SYSTEM_FIX = "pass a unit folder written by asc-ray (<output>/students/split<N>/<system>)"


# ------------------------------------------------------------------------------------ what a model is
def unit_spec(system: System, cfg: dict) -> dict:
    """What rebuilding a trained model needs, without the training config: its system, the architecture
    keys build_model reads (after any search override), and its input sample rate."""
    from asc_ray.data.tau import SCENES

    return {
        "format": SPEC_VERSION,
        "system": system.name,
        "model": system.model,
        "frontend": system.frontend,
        "sample_rate": frontend_sample_rate(system.frontend),
        "clip_seconds": 1.0,
        "classes": list(SCENES),
        "channels": dict(cfg["channels"]),
        "passt": {"size": cfg["passt"]["size"], "pretrained": False},
    }


def write_unit_spec(out_dir: str | Path, system: System, cfg: dict) -> Path:
    """Called by Trainer.finish(): the unit folder carries what predict needs to rebuild its model."""
    from asc_ray.io import atomic_write_json

    return atomic_write_json(Path(out_dir) / UNIT_SPEC, unit_spec(system, cfg))


def read_unit_spec(folder: str | Path) -> dict:
    """unit.json of a unit folder; units trained before it existed: result.json + the run's config.json."""
    folder = Path(folder)
    p = folder / UNIT_SPEC
    if p.is_file():
        try:
            spec = json.loads(p.read_text())
            get_system(spec["system"])
            return spec
        except (ValueError, KeyError, TypeError, AscRayError):
            raise AscRayError(
                f"{UNIT_SPEC} is not one asc-ray wrote (unreadable or unknown system)",
                path=p,
                fix=OTHER_SYSTEM_FIX,
            ) from None
    result, config = folder / "result.json", folder.parent.parent / "config.json"
    if result.is_file() and config.is_file():
        try:
            system = get_system(json.loads(result.read_text())["system"])
            return unit_spec(system, json.loads(config.read_text()))
        except (ValueError, KeyError, TypeError, AscRayError):
            pass
    raise AscRayError(
        f"not an asc-ray unit folder (no {UNIT_SPEC}, or result.json + ../../config.json)",
        path=folder,
        fix=OTHER_SYSTEM_FIX,
    )


# ------------------------------------------------------------------------------------- the one path
def _build(spec: dict) -> torch.nn.Module:
    from asc_ray.train import build_model

    return build_model(
        get_system(spec["system"]), {"channels": spec["channels"], "passt": spec["passt"]}, False
    )


def _load_state(model: torch.nn.Module, model_path: str | Path, system: str) -> torch.nn.Module:
    if not Path(model_path).is_file():
        raise AscRayError("model file not found", path=model_path, fix="check the path (or re-run the stage)")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file, a truncated one
        raise AscRayError(
            "not a model weights file (torch.load cannot read it)", path=model_path, fix=OTHER_SYSTEM_FIX
        ) from None
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - another architecture, not a state dict
        raise AscRayError(
            f"model file does not fit {system}: {str(e).splitlines()[0][:200]}",
            path=model_path,
            fix="re-run the stage that trained it (or --fresh); " + OTHER_SYSTEM_FIX,
        ) from None
    if any(torch.is_tensor(v) and v.dtype == torch.float16 for v in state.values()):
        model = model.half()  # an fp16 export is the deployed model: it runs in fp16, on CPU as on GPU
    return model.eval()


@dataclass
class Classifier:
    """A trained model with its front-end, in eval mode: waveforms at `sample_rate` in, logits out."""

    spec: dict
    model: torch.nn.Module
    frontend: torch.nn.Module
    device: torch.device
    source: str

    @classmethod
    def from_weights(cls, spec: dict, model_path: str | Path, device: str | None = None) -> Classifier:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = _load_state(_build(spec), model_path, spec["system"]).to(dev)
        frontend = build_frontend(spec.get("frontend", spec["model"])).to(dev).eval()
        return cls(spec, model, frontend, dev, str(model_path))

    @property
    def system(self) -> System:
        return get_system(self.spec["system"])

    @property
    def sample_rate(self) -> int:
        return int(self.spec["sample_rate"])

    @property
    def window(self) -> int:
        return round(self.spec.get("clip_seconds", 1.0) * self.sample_rate)

    @torch.no_grad()
    def logits(self, waves: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [B, 10] of B equal-length waveforms [B, n] (n = one window), batched."""
        waves = torch.as_tensor(np.asarray(waves, dtype=np.float32))
        dtype = next(self.model.parameters()).dtype  # fp16 weights: the front-end's output is cast to fp16
        out = []
        for i in range(0, len(waves), BATCH):
            x = self.frontend(waves[i : i + BATCH].to(self.device))
            out.append(self.model(x.to(dtype)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.spec["classes"])), np.float32)

    def windows(self, wave: np.ndarray) -> np.ndarray:
        """A mono clip at `sample_rate` -> its 1-s windows [k, n]: shorter clips zero-padded to one window,
        longer ones cut into consecutive windows, the last one ending at the clip's end."""
        n = self.window
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if len(wave) <= n:
            return np.pad(wave, (0, n - len(wave)))[None]
        starts = list(range(0, len(wave) - n + 1, n))
        if starts[-1] + n < len(wave):
            starts.append(len(wave) - n)
        return np.stack([wave[s : s + n] for s in starts])

    def probabilities(self, waves: Sequence[np.ndarray], progress=None) -> np.ndarray:
        """Scene probabilities [len(waves), 10] of clips of any length at `sample_rate`: the mean of the
        softmax over each clip's 1-s windows (windows of many clips share a batch)."""
        probs = np.zeros((len(waves), len(self.spec["classes"])), dtype=np.float64)
        pending: list[np.ndarray] = []
        owners: list[int] = []

        def flush():
            p = torch.softmax(torch.from_numpy(self.logits(np.stack(pending))).double(), dim=1).numpy()
            np.add.at(probs, np.array(owners), p)
            pending.clear()
            owners.clear()

        counts = np.zeros(len(waves))
        for i, w in enumerate(waves):
            win = self.windows(w)
            counts[i] = len(win)
            pending.extend(win)
            owners.extend([i] * len(win))
            if len(pending) >= BATCH:
                flush()
            if progress is not None:
                progress.update(1)
        if pending:
            flush()
        return probs / np.maximum(counts, 1)[:, None]


def load_trained(system: System, cfg: dict, model_path: str | Path) -> torch.nn.Module:
    """The model of `system` (architecture from `cfg`) with the weights at model_path, eval mode, CPU."""
    return _load_state(_build(unit_spec(system, cfg)), model_path, system.name)


def predict_files(
    system: System, cfg: dict, model_path: str | Path, store: WaveformStore, files: Sequence[str]
) -> np.ndarray:
    """Logits [len(files), 10] of cached 1-s clips (the evaluation-set export), batched, GPU when there is one."""
    clf = Classifier.from_weights(unit_spec(system, cfg), model_path)
    if store.sample_rate != clf.sample_rate:
        raise AscRayError(
            f"waveform cache is at {store.sample_rate} Hz, {system.name} takes {clf.sample_rate} Hz",
            path=store.path,
            fix="build the cache at the model's sample rate (asc_ray.features.frontend_sample_rate)",
        )
    rows = np.array([store.index_of(f) for f in files])
    return np.concatenate([clf.logits(store.rows(rows[i : i + BATCH])) for i in range(0, len(rows), BATCH)])


# ------------------------------------------------------------------------------------ finding a model
def _is_mlflow_uri(s: str) -> bool:
    return s.startswith(("runs:/", "models:/")) or ("://" in s and not Path(s).exists())


def load_classifier(model: str, device: str | None = None) -> Classifier:
    """A unit folder, an exported weights file with its unit.json beside it, or an MLflow model URI."""
    if _is_mlflow_uri(model):
        from asc_ray.mlflow_model import load_classifier_from_mlflow

        return load_classifier_from_mlflow(model, device)
    p = Path(model)
    if p.is_dir():
        if (p / "MLmodel").is_file():  # a downloaded MLflow model folder
            from asc_ray.mlflow_model import load_classifier_from_mlflow

            return load_classifier_from_mlflow(str(p), device)
        spec = read_unit_spec(p)
        # a student's deployed model is its fp16 export (what results.csv reports); a teacher has model.pt only
        weights = p / "model_fp16.pt" if (p / "model_fp16.pt").is_file() else p / "model.pt"
        return Classifier.from_weights(spec, weights, device)
    if p.is_file():
        spec = _spec_for_file(p)
        return Classifier.from_weights(spec, p, device)
    raise AscRayError(
        "model not found",
        path=model,
        fix="pass a unit folder (<output>/students/split<N>/<system>), a model_fp16.pt / model.pt, or an "
        "MLflow model URI (runs:/<run id>/model, models:/asc-ray-<system>-split<N>/<version>)",
    )


def _spec_for_file(path: Path) -> dict:
    """A weights file: its folder's unit.json, else the student architecture its tensors fit."""
    try:
        return read_unit_spec(path.parent)
    except AscRayError:
        pass
    from asc_ray.config import load_config

    cfg = load_config("full", None, [])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise AscRayError(
            f"not a model file: {str(e).splitlines()[0][:200]}", path=path, fix=OTHER_SYSTEM_FIX
        ) from None
    for name in ("baseline", "bcbl24"):  # the two student architectures (kd_ensemble/tfs are baseline's)
        model = _build(unit_spec(SYSTEMS[name], cfg))
        if isinstance(state, dict) and all(
            k in state and tuple(v.shape) == tuple(state[k].shape) for k, v in model.state_dict().items()
        ):
            return unit_spec(SYSTEMS[name], cfg)
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
    import soundfile as sf
    import torchaudio.functional as AF

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
    from tqdm import tqdm

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


# ---------------------------------------------------------------------------------------------- CLI
def _table(names: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> str:
    w = max([len("filename"), *map(len, names)])
    head = f"{'filename':<{w}}  {'scene_label':<17}  " + "  ".join(f"{c[:8]:>8}" for c in classes)
    lines = [head]
    for n, p in zip(names, probs, strict=True):
        lines.append(f"{n:<{w}}  {classes[int(p.argmax())]:<17}  " + "  ".join(f"{x:>8.4f}" for x in p))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="asc-ray-predict",
        description="Classify recordings into the 10 TAU acoustic scenes with a trained asc-ray model.",
        epilog="Audio of any sample rate, channel count and length that soundfile reads is accepted: channels "
        "are averaged, the audio is resampled to the model's rate (32 kHz, or 44.1 kHz for bcbl24). Clips "
        "longer than 1 s are classified per 1-s window (consecutive windows, the last one ending at the "
        "clip's end) and the window probabilities are averaged; shorter clips are zero-padded to 1 s. "
        "Exit status: 0 all classified; 1 some files could not be read (the rest are classified, the "
        "failures listed on stderr); 2 bad input (model or audio not found, nothing readable).",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="unit folder (<output>/students/split100/kd_ensemble: its model_fp16.pt), exported model_fp16.pt, or "
        "MLflow model URI (runs:/<run id>/model, models:/asc-ray-<system>-split<N>/<version>)",
    )
    p.add_argument("audio", metavar="AUDIO", nargs="+", help="audio files, folders (recursive) or globs")
    p.add_argument(
        "--out",
        default=None,
        help="write a tab-separated file in the DCASE output.csv layout (filename, scene_label, one "
        "probability per scene) instead of printing a table",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    a = p.parse_args(argv)
    files = find_audio(a.audio)
    clf = load_classifier(a.model, a.device)
    ok, probs, failed = classify_files(clf, files)
    if not ok:
        first = failed[0][1]
        raise AscRayError(
            f"none of the {len(files)} audio file(s) could be read; first: {first.problem}",
            path=first.path,
            fix=first.fix,
        )
    names = [str(f) for f in ok]
    if a.out:
        from asc_ray.export import write_dcase_output

        # log of the averaged probabilities: write_dcase_output's softmax gives them back exactly
        write_dcase_output(a.out, names, np.log(np.clip(probs, 1e-30, None)))
        print(
            f"{len(ok)} file(s) classified with {clf.spec['system']} ({clf.source}): {a.out}", file=sys.stderr
        )
    else:
        print(_table(names, probs, clf.spec["classes"]))
    if failed:
        print(f"{len(failed)} file(s) could not be classified:", file=sys.stderr)
        for f, e in failed:
            print(f"  {f}: {e.problem}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """Console script entry point (asc-ray-predict)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
