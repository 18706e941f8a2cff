"""A trained model with its front-end: the one inference path. Training's test evaluation, its validation, the
teachers' logits over a split, the evaluation-set export, `asc-ray-predict` and the MLflow model all run
`Classifier` (eval mode, batched, GPU when there is one).

What a model is (system, architecture, sample rate) comes from the `unit.json` that training writes beside the
weights (`unit_spec`), so a model can be rebuilt without the config that trained it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from asc_ray.data.cache import WaveformStore
from asc_ray.data.tau import SCENES
from asc_ray.errors import AscRayError
from asc_ray.features import build_frontend, frontend_sample_rate
from asc_ray.io import atomic_write_json, read_or_raise
from asc_ray.layout import Layout, UnitFiles, UnitRef, registered_name
from asc_ray.models import build_model
from asc_ray.predict import shared_features
from asc_ray.systems import System, get_system

UNIT_SPEC = "unit.json"  # what a unit folder (and the MLflow model) says about its model
SPEC_VERSION = 1
# windows per forward pass: a GPU wants large batches; a CPU runs these small CNNs ~3x faster in batches of 16
# (their activations stay in cache: docs/benchmarks.md)
BATCH, CPU_BATCH = 256, 16
# what the help and error messages show as a model: a student's unit folder, its registered MLflow model
EXAMPLE_UNIT = Layout("<output>").unit_dir(UnitRef("kd_ensemble", 100, 0))
EXAMPLE_MODEL = f"models:/{registered_name('kd_ensemble', 100)}"
OTHER_SYSTEM_FIX = f"pass a unit folder written by asc-ray (e.g. {EXAMPLE_UNIT})"


# ------------------------------------------------------------------------------------ what a model is
def unit_spec(system: System, cfg) -> dict:
    """What rebuilding a trained model needs, without the training config: its system, the architecture keys
    its builder reads (after any search override), and its input sample rate."""
    return {
        "format": SPEC_VERSION,
        "system": system.name,
        "model": system.model,
        "frontend": system.frontend,
        "sample_rate": frontend_sample_rate(system.frontend),
        "clip_seconds": 1.0,
        "classes": list(SCENES),
        "channels": dict(cfg.channels),
        "passt": {"size": cfg.passt.size, "pretrained": False},
    }


def write_unit_spec(out_dir: str | Path, system: System, cfg) -> Path:
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
    result, config = UnitFiles(folder).record, folder.parent.parent / "config.json"
    if result.is_file() and config.is_file():
        try:
            system = get_system(json.loads(result.read_text())["system"])
            cfg = json.loads(config.read_text())
            return unit_spec(
                system, SimpleNamespace(channels=cfg["channels"], passt=SimpleNamespace(**cfg["passt"]))
            )
        except (ValueError, KeyError, TypeError, AscRayError):
            pass
    raise AscRayError(
        f"not an asc-ray unit folder (no {UNIT_SPEC}, or result.json + ../../config.json)",
        path=folder,
        fix=OTHER_SYSTEM_FIX,
    )


def build_from_spec(spec: dict) -> torch.nn.Module:
    """An untrained network of the spec's architecture, to load its weights into."""
    view = SimpleNamespace(
        channels=SimpleNamespace(**spec["channels"]), passt=SimpleNamespace(**spec["passt"])
    )
    return build_model(spec["model"], view, pretrained=False)


def load_weights(model: torch.nn.Module, weights: str | Path | dict, system: str) -> torch.nn.Module:
    """`model` with the weights of a file (or a state dict); fp16 weights make an fp16 model (the deployed
    student runs in fp16, on CPU as on GPU)."""
    state = weights
    if not isinstance(weights, dict):
        state = read_or_raise(
            weights,
            lambda p: torch.load(p, map_location="cpu", weights_only=True),
            "model file",
            "check the path (or re-run the stage that trained it)",
            "not a model weights file (torch.load cannot read it)",
        )
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - another architecture, not a state dict
        raise AscRayError(
            f"model file does not fit {system}: {str(e).splitlines()[0][:200]}",
            path=None if isinstance(weights, dict) else weights,
            fix="re-run the stage that trained it (or --fresh); " + OTHER_SYSTEM_FIX,
        ) from None
    if any(torch.is_tensor(v) and v.dtype == torch.float16 for v in state.values()):
        model = model.half()
    return model.eval()


class Fp16ConvolutionsInFp32Kernels(TorchFunctionMode):
    """Within it, a convolution of fp16 tensors runs through the fp32 kernel: its fp16 inputs and weights
    converted exactly to fp32, the products summed in fp32 and the sum rounded to fp16 once, which is what
    torch's own fp16 kernel on a CPU computes (fp32 accumulation), only on oneDNN instead of torch's scalar
    fallback (`aten::_slow_conv2d_forward`, one call per group of a depthwise convolution): a student's fp16
    test is ~4x faster on a CPU without fp16 units (docs/benchmarks.md). The summation order differs, so an
    output element can differ by one fp16 ulp (tests/serving/test_predict.py). Every other op stays fp16."""

    CONVS = (torch.conv1d, torch.conv2d, torch.conv3d)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.CONVS or args[0].dtype != torch.float16:
            return func(*args, **kwargs)

        def fp32(v):
            return v.float() if torch.is_tensor(v) and v.dtype == torch.float16 else v

        return func(*map(fp32, args), **{k: fp32(v) for k, v in kwargs.items()}).half()


# ------------------------------------------------------------------------------------- the one path
@dataclass
class Classifier:
    """A model with its front-end, in eval mode: waveforms at `sample_rate` in, logits out. `channels_last` and
    `amp` (bf16 autocast, GPU only) are the training run's settings, so that its figures are reproduced."""

    spec: dict
    model: torch.nn.Module
    frontend: torch.nn.Module
    device: torch.device
    source: str
    channels_last: bool = False
    amp: bool = False

    @classmethod
    def from_weights(
        cls,
        spec: dict,
        weights: str | Path | dict,
        device: str | torch.device | None = None,
        channels_last: bool = False,
        amp: bool = False,
    ) -> Classifier:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = load_weights(build_from_spec(spec), weights, spec["system"]).to(dev)
        frontend = build_frontend(spec.get("frontend", spec["model"])).to(dev)
        source = "weights in memory" if isinstance(weights, dict) else str(weights)
        return cls(spec, model, frontend, dev, source, channels_last, amp)

    @property
    def system(self) -> System:
        return get_system(self.spec["system"])

    @property
    def sample_rate(self) -> int:
        return int(self.spec["sample_rate"])

    @property
    def batch(self) -> int:
        return BATCH if self.device.type == "cuda" else CPU_BATCH

    @property
    def window(self) -> int:
        return round(self.spec.get("clip_seconds", 1.0) * self.sample_rate)

    def _runner(self) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The model in eval mode, as `run(x, k)`: logits of a batch's front-end output `x` (fp32), its first k
        rows (the rest: a CPU's padding)."""
        dtype = next(self.model.parameters()).dtype  # fp16 weights: the front-end's output is cast to fp16
        # fp16 on a CPU runs in the default layout whatever training used: the deployed model then gives the test
        # pass's numbers in asc-ray-predict and the MLflow model too, which know no training layout
        cpu = self.device.type == "cpu"
        cl = self.channels_last and not (dtype == torch.float16 and cpu)
        layout = torch.channels_last if cl else torch.contiguous_format
        self.model.to(memory_format=layout).eval()
        amp = self.amp and dtype == torch.float32 and self.device.type == "cuda"

        def run(x: torch.Tensor, k: int) -> torch.Tensor:
            fp16_convs = Fp16ConvolutionsInFp32Kernels() if cpu and dtype == torch.float16 else nullcontext()
            x = x.to(dtype).contiguous(memory_format=layout)
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext(), fp16_convs:
                return self.model(x).float().cpu()[:k]

        return run

    def logits(self, waves: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [B, 10] of B equal-length waveforms [B, n] (n = one window), batched."""
        waves = torch.as_tensor(np.asarray(waves, dtype=np.float32))
        if not len(waves):
            return np.zeros((0, len(self.spec["classes"])), np.float32)
        return one_pass([self], len(waves), lambda i, j: waves[i:j])[0]

    def logits_of(self, store: WaveformStore, files: Sequence[str]) -> np.ndarray:
        """Logits [len(files), 10] of cached 1-s clips (a waveform cache at the model's sample rate)."""
        return logits_of_each([self], store, files)[0]

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
            if len(pending) >= self.batch:
                flush()
            if progress is not None:
                progress.update(1)
        if pending:
            flush()
        return probs / np.maximum(counts, 1)[:, None]


def _clips(store: WaveformStore, files: Sequence[str]) -> tuple[int, Callable[[int, int], torch.Tensor]]:
    rows = np.array([store.index_of(f) for f in files])
    return len(rows), lambda i, j: torch.from_numpy(store.rows(rows[i:j]))


@torch.no_grad()
def one_pass(
    models: Sequence[Classifier],
    n: int,
    take: Callable[[int, int], torch.Tensor],
    share: tuple[WaveformStore, Sequence[str]] | None = None,
) -> list[np.ndarray]:
    """Logits [n, 10] of n windows for each of `models` (one spec, one device: e.g. a student at fp32 and its fp16
    export), `take(i, j)` giving windows i..j-1, in batches: the front-end runs once per batch for all of them
    (on a CPU, ~3 CPU s per 1,000 clips: as much as a small CNN). On a CPU the last, shorter batch of a pass of
    several runs padded to the batch size: its kernels for another batch size can round differently, and a
    window's logits would depend on the pass. `share` (the windows are these cached clips): the front-end's
    output is read from, or written for, the next pass over the same clips (shared_features)."""
    first = models[0]
    same = [(m.spec.get("frontend", m.spec["model"]), m.device) for m in models]
    if len(set(same)) > 1:
        raise ValueError(f"one pass takes models of one front-end and device, not {same}")
    b, frontend = first.batch, first.frontend.eval()
    pad = n > b and first.device.type == "cpu"
    rows = -(-n // b) * b if pad else n
    path = shared_features.entry(frontend, *share, b, pad) if share else None
    ready = shared_features.read(path, rows)
    writer = shared_features.Writer(path if ready is None else None)
    runs, out = [m._runner() for m in models], [[] for _ in models]
    try:
        for i in range(0, n, b):
            k = min(i + b, n) - i
            if ready is not None:
                x = torch.from_numpy(np.array(ready[i : i + (b if pad else k)]))
            else:
                waves = take(i, i + k)
                if pad and k < b:
                    waves = torch.cat([waves, waves.new_zeros((b - k, *waves.shape[1:]))])
                x = frontend(waves.to(first.device))
                writer.put(i, x, rows)
            for run, logits in zip(runs, out, strict=True):
                logits.append(run(x, k))
    except BaseException:
        writer.drop()  # an interrupted pass leaves no half-written temporary behind
        raise
    writer.publish()
    return [torch.cat(logits).numpy() for logits in out]


def logits_of_each(
    models: Sequence[Classifier], store: WaveformStore, files: Sequence[str]
) -> list[np.ndarray]:
    """Classifier.logits_of for several models of one spec, in one pass of the front-end (one_pass), whose output
    the next pass over the same clips reads back (shared_features: on a CPU, with a log-mel front-end)."""
    for m in models:
        if store.sample_rate != m.sample_rate:
            raise AscRayError(
                f"waveform cache is at {store.sample_rate} Hz, {m.spec['system']} takes {m.sample_rate} Hz",
                path=store.path,
                fix="build the cache at the model's sample rate (asc_ray.features.frontend_sample_rate)",
            )
    return one_pass(models, *_clips(store, files), share=(store, files))
