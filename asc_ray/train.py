"""One model's training and evaluation: the loop every teacher and student of the pipeline runs.

Plain PyTorch, no Ray. The Ray layer calls `fit()` inside a Train worker or a Tune trial and passes a
`report` callback; `python -m asc_ray.train` runs the same code alone:

    python -m asc_ray.train --system baseline --data-dir D --split 100 --epochs 5 --output-dir O

Per step: waveform (cached, already at the front-end's sample rate) -> roll (baseline recipe) -> DIR (device a)
-> log-mel front-end (frequency masking / PaSST fmax jitter in training) -> Freq-MixStyle -> mixup -> model -> loss.
Each unit trains with its own seed (unit_seed: from seed, system and split); each data-parallel rank draws its
own augmentation randomness per epoch (augment_seed), while the weights start identical on every rank.
Each epoch: validation on the split's holdout (model selection); every train.checkpoint_every epochs and at the
end a checkpoint to resume from (asc_ray.checkpointing).
At the end: the selected model on test (students: the deployed fp16 export, see asc_ray.outputs), DCASE output.csv,
complexity, plots; teachers also write their logits over the split's training files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asc_ray import augment, losses
from asc_ray.checkpointing import is_save_epoch
from asc_ray.cli import add_epochs_option, with_epochs
from asc_ray.config import config_hash, flatten, load_config
from asc_ray.data.cache import WaveformStore, build_cache
from asc_ray.data.dataset import ClipBatches, to_device
from asc_ray.data.holdout import split_holdout
from asc_ray.data.irs import load_irs
from asc_ray.data.tau import DEVICE_INDEX, N_CLASSES, TauDataset
from asc_ray.errors import AscRayError, run_cli
from asc_ray.features import build_frontend, describe, frontend_sample_rate, input_shape
from asc_ray.systems import System, get_system, hparams

DEVICE_A = DEVICE_INDEX["a"]
EVAL_BATCH = 256


# ---------------------------------------------------------------------------------------------- seeds
def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts, stable across runs, processes and Python versions (not hash())."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def unit_seed(seed: int, system: str, split: int) -> int:
    """The seed one unit trains with (MLflow param `train_seed`): independent teachers, stable across resumes."""
    return derive_seed(seed, system, split)


def augment_seed(train_seed: int, epoch: int, rank: int) -> int:
    """Seed of one rank's augmentation randomness in one epoch (mixup, DIR, FMS, roll, masking, patchout):
    data-parallel ranks draw different augmentations; a resumed epoch draws what it drew the first time."""
    return derive_seed(train_seed, epoch, rank)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """What one training needs, prepared once per process."""

    ds: TauDataset
    store: WaveformStore  # waveforms at the system's sample rate
    split_files: list[str]  # the split's training files (what teacher logits cover)
    train_files: list[str]  # split_files minus the validation holdout
    val_files: list[str]  # holdout: model selection only
    test_files: list[str]  # reported, never used for selection
    irs: list[torch.Tensor] | None
    teacher_logits: np.ndarray | None  # aligned with train_files (kd / focusnet students)


def cache_file_list(ds: TauDataset) -> list[str]:
    """One stable superset per dataset (split100 + test), so one cache serves every split and stage."""
    try:
        files = set(ds.split_files(100))
    except AscRayError:  # user brought smaller splits only: cache what exists
        files = set()
        for s in (5, 10, 25, 50):
            try:
                files |= set(ds.split_files(s))
            except AscRayError:
                pass
    return sorted(files | set(ds.test_files()))


def resolve_paths(cfg: dict, data_dir: str | Path, output_dir: str | Path) -> dict[str, Path]:
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    d = cfg["data"]
    return {
        "data_dir": data_dir,
        "cache_dir": Path(d["cache_dir"]) if d["cache_dir"] else output_dir / "cache",
        "irs_dir": Path(d["irs_dir"]) if d["irs_dir"] else data_dir / "irs",
        "logits_dir": output_dir / "logits",
    }


def prepare_data(
    cfg: dict,
    data_dir: str | Path,
    output_dir: str | Path,
    split: int,
    system: System,
    logits: str | Path | tuple[list[str], np.ndarray] | None = None,
    progress: bool = True,
    store: WaveformStore | None = None,
) -> RunData:
    """Open the data, carve the holdout, reuse/build the waveform cache (or use `store`, the pipeline's: no
    audio file is touched then), load IRs and (for KD/TFS) the teacher logits: a Parquet path, or (files,
    logits) as the LogitAggregator hands them out."""
    from asc_ray.logits import read_logits

    paths = resolve_paths(cfg, data_dir, output_dir)
    ds = TauDataset.open(paths["data_dir"], cfg["data"]["split_dir"])
    split_files = ds.split_files(split)
    if cfg["train"]["select"] == "last":  # nothing would read a holdout: the whole split trains
        train_files, val_files = list(split_files), []
    else:
        train_files, val_files = split_holdout(ds, split_files, cfg["data"]["holdout_fraction"], cfg["seed"])
    if store is None:
        store = build_cache(
            ds, cache_file_list(ds), frontend_sample_rate(system.frontend), paths["cache_dir"], progress
        )
    irs = load_irs(paths["irs_dir"], store.sample_rate) if system.dir else None
    teacher_logits = None
    if system.needs:
        if isinstance(logits, tuple):
            pos = {f: i for i, f in enumerate(logits[0])}
            table = logits[1]
            if set(pos) != set(split_files):
                raise AscRayError(
                    f"teacher logits do not cover split {split}'s files",
                    path=paths["logits_dir"],
                    fix="re-run the teachers stage for this split (or --fresh)",
                )
        else:
            path = logits or paths["logits_dir"] / f"{system.needs}_split{split}.parquet"
            table = read_logits(path, split_files)
            pos = {f: i for i, f in enumerate(split_files)}
        teacher_logits = table[[pos[f] for f in train_files]]
    return RunData(ds, store, split_files, train_files, val_files, ds.test_files(), irs, teacher_logits)


# ------------------------------------------------------------------------------------- model, optim
def build_model(system: System, cfg: dict, pretrained: bool = True) -> torch.nn.Module:
    """pretrained=False: an empty shell to load our own weights into (no AudioSet checkpoint lookup)."""
    from asc_ray.models import bcbl, passt

    if system.model == "passt":
        p = cfg["passt"]
        return passt(pretrained=p["pretrained"] and pretrained, size=p["size"], n_classes=N_CLASSES)
    return bcbl(cfg["channels"][system.model], N_CLASSES)


def train_epochs(system: System, cfg: dict, steps_per_epoch: int) -> int:
    """The epochs a unit trains: exactly `train.epochs` where set; else its family's `epochs`, raised where a
    split is too small for them to make `train.min_steps` optimizer steps (a smoke run's 44-clip split 5 has 6
    batches an epoch)."""
    if cfg["train"]["epochs"]:
        return cfg["train"]["epochs"]
    epochs = hparams(system, cfg)["epochs"]
    return max(epochs, math.ceil(cfg["train"]["min_steps"] / max(1, steps_per_epoch)))


def build_optimizer(system: System, cfg: dict, model: torch.nn.Module, steps_per_epoch: int):
    h = hparams(system, cfg)
    total = max(1, train_epochs(system, cfg, steps_per_epoch) * steps_per_epoch)
    if system.family == "passt":
        # Adam, linear warm-up over warmup_epochs, then linear decay to 1 % (CP-JKU's PaSST fine-tuning)
        opt = torch.optim.Adam(model.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        warm = max(1, h["warmup_epochs"] * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.01, 1.0 - 0.99 * (step - warm) / max(1, total - warm))
    else:
        # AdamW, cosine schedule with linear warm-up (100 steps in the report; 2000 in the DCASE baseline recipe)
        opt = torch.optim.AdamW(model.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        warm = max(1, min(h["warmup_steps"], total // 2))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compute_loss(system: System, cfg: dict, z: torch.Tensor, y: torch.Tensor, zt: torch.Tensor | None):
    if system.loss == "kd":
        k = cfg["kd"]
        return losses.kd_loss(
            z, zt, y, lam=k["lam"], temperature=k["temperature"], kl_reduction=k["kl_reduction"]
        )
    if system.loss == "focusnet":
        f = cfg["focusnet"]
        return losses.focusnet_loss(z, zt, y, alpha=f["alpha"], beta=f["beta"], variant=f["variant"])
    return torch.sum(-y * F.log_softmax(z, dim=-1), dim=-1).mean()  # CE with (possibly mixed) soft targets


def use_channels_last(system: System, cfg: dict) -> bool:
    v = cfg["train"]["channels_last"]
    return (system.model != "passt") if v == "auto" else bool(v)


# ------------------------------------------------------------------------------------------ the loop
_STATE_KEYS = ("model", "opt", "sched", "epoch", "history", "best", "torch_rng")


def _read_checkpoint(path: Path, device) -> dict | str:
    """The checkpoint's state dict, or why it cannot be read (missing, truncated, corrupt, not ours)."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a torn or foreign file
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        return "not an asc-ray checkpoint (keys missing)"
    return state


def save_or_explain(obj: object, path: Path) -> None:
    """torch.save, turning a full disk into an AscRayError that names the path and the space needed."""
    from asc_ray.io import explain_write_error

    try:
        with open(path, "wb") as f:  # a file object: a full disk is then an OSError (ENOSPC), not a C++ error
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        # torch's zip writer may replace the OSError by a RuntimeError while closing: look behind it
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError) or not isinstance(explain_write_error(cause, path), AscRayError):
            raise
        import io

        buf = io.BytesIO()  # what the file needs (only on this rare path: it costs a copy in memory)
        torch.save(obj, buf)
        path.unlink(missing_ok=True)
        raise explain_write_error(cause, path, buf.tell()) from None


class Trainer:
    """Trains one system on one split; see the module docstring."""

    def __init__(
        self,
        system: System,
        cfg: dict,
        data: RunData,
        out_dir: str | Path,
        split: int,
        log: Callable[[str], None] = print,
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    ):
        self.system, self.cfg, self.data, self.split = system, cfg, data, split
        self.out_dir = Path(out_dir)
        self.log = log if rank == 0 else (lambda _msg: None)
        self.rank, self.world_size = rank, world_size
        self.h = hparams(system, cfg)
        self.seed = unit_seed(
            cfg["seed"], system.name, split
        )  # same on every rank: identical initial weights
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
        if cfg["train"]["num_threads"] > 0:
            torch.set_num_threads(cfg["train"]["num_threads"])
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        self.frontend = build_frontend(system.frontend, cfg["augment"]["freqm"]).to(self.device)
        self.roll = round(self.h.get("roll_s", 0.0) * data.store.sample_rate)  # max shift in samples
        # the device impulse responses live on the training device, copied there once
        self.irs = augment.ir_bank(data.irs, self.device) if system.dir and data.irs else None
        # one batch in flight on a GPU (asc_ray.data.dataset.to_device); bench/gpu_throughput.py turns it off
        self.prefetch = True
        self.model = build_model(system, cfg).to(self.device)
        self.channels_last = use_channels_last(system, cfg)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        if cfg["train"]["compile"]:
            self.net = torch.compile(self.model)
        if wrap_model is not None:
            self.net = wrap_model(self.net)
        amp = cfg["train"]["amp"]
        self.amp = self.device.type == "cuda" if amp == "auto" else bool(amp) and self.device.type == "cuda"
        # each rank trains on its shard of the training files (equal lengths keep DDP in step)
        files = data.train_files
        tl = data.teacher_logits
        if world_size > 1:
            per = len(files) // world_size
            sel = np.arange(rank, per * world_size, world_size)
            files = [files[i] for i in sel]
            tl = None if tl is None else tl[sel]
        self.batches = ClipBatches(
            data.ds,
            data.store,
            files,
            self.h["batch_size"],
            shuffle=True,
            seed=self.seed,
            teacher_logits=tl,
            drop_last=len(files) > self.h["batch_size"],
        )
        self.h["epochs"] = train_epochs(system, cfg, len(self.batches))
        self.opt, self.sched = build_optimizer(system, cfg, self.model, len(self.batches))
        self.unit_key: str | None = None  # the pipeline unit's key: a fallback checkpoint must carry it
        self.epoch = 0
        self.history: list[dict] = []
        self.best: dict = {"val_macro_acc": -1.0, "epoch": -1}
        self.record_extra: dict = {}
        self._best_changed = False  # best model changed since the last checkpoint: best.pt is due
        self._best_weights: dict | None = None  # its weights, when they are not the current ones
        self.trained_files: set[str] | None = None  # a set: collects the files this rank trained on (tests)

    # -- checkpoints: a folder with checkpoint.pt (+ best.pt), replaced atomically each epoch
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "torch_rng": torch.get_rng_state(),
            "system": self.system.name,
            "split": self.split,
            "key": self.unit_key,
        }

    def save_checkpoint(self) -> Path:
        """checkpoint/ is replaced atomically; the one before is kept as checkpoint.prev/ so that a torn
        checkpoint.pt (a node died while shared storage flushed it) still has a good one behind it. best.pt is
        written only when the best model changed since the last checkpoint, else hard-linked from the previous
        folder (no bytes written; see asc_ray.checkpointing)."""
        from asc_ray.checkpointing import link_or_copy

        final = self.out_dir / "checkpoint"
        prev = self.out_dir / "checkpoint.prev"
        tmp = self.out_dir / f".checkpoint.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            save_or_explain(self.state(), tmp / "checkpoint.pt")
            best = final / "best.pt"
            if self._best_changed or not best.is_file():
                weights = self._best_weights if self._best_weights is not None else self.model.state_dict()
                save_or_explain(weights, tmp / "best.pt")
            else:
                link_or_copy(best, tmp / "best.pt")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: free what this attempt took
            raise
        self._best_changed, self._best_weights = False, None
        old = self.out_dir / f".checkpoint.old-{os.getpid()}"
        if final.exists():
            if prev.exists():
                os.rename(prev, old)
            os.rename(final, prev)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _note_best(self, save_now: bool) -> None:
        """The best model just changed: best.pt follows at the next checkpoint, from a CPU copy of these
        weights when that checkpoint is a later epoch (train.checkpoint_every > 1)."""
        self._best_changed = True
        self._best_weights = (
            None
            if save_now
            else {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        )

    def load_checkpoint(self, folder: str | Path) -> bool:
        """Resume from `folder`/checkpoint.pt. A torn or corrupt file (unreadable, truncated) is logged and
        the previous good checkpoint of this unit is used instead (checkpoint.prev/, or checkpoint/ when Ray
        handed over its own copy), else training starts clean; False then. A readable checkpoint of another
        model is an AscRayError: it is someone's work, left alone."""
        candidates = [Path(folder)]
        for c in (self.out_dir / "checkpoint", self.out_dir / "checkpoint.prev"):
            if c.resolve() not in [x.resolve() for x in candidates]:
                candidates.append(c)
        for i, cand in enumerate(candidates):
            path = cand / "checkpoint.pt"
            if i > 0 and not path.is_file():
                continue
            state = _read_checkpoint(path, self.device)
            if isinstance(state, str):
                self.log(f"[{self.tag}] checkpoint unreadable, skipped ({state}): {path}")
                continue
            if i > 0 and state.get("key") != self.unit_key:  # a fallback must be of this very unit
                continue
            self._load_state(state, path)
            if i > 0:
                self.log(f"[{self.tag}] fell back to the previous good checkpoint {path}")
            best = cand / "best.pt"
            if best.is_file() and cand.resolve() != (self.out_dir / "checkpoint").resolve():
                from asc_ray.checkpointing import link_or_copy

                (self.out_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
                # a new entry, never a write into the old file: it may be a hard link shared with Ray's copy
                link_or_copy(best, self.out_dir / "checkpoint" / "best.pt")
            self.log(f"[{self.tag}] resumed from epoch {self.epoch}")
            return True
        self.log(f"[{self.tag}] no readable checkpoint left: training from scratch")
        return False

    def _load_state(self, state: dict, path: Path) -> None:
        fix = (
            "check that --output-dir and --system name the run you meant; this checkpoint is another "
            "model's work and is left as it is (move the folder elsewhere to keep it; --fresh trains from "
            "scratch and replaces it)"
        )
        if state.get("system", self.system.name) != self.system.name:
            raise AscRayError(
                f"checkpoint does not fit {self.system.name} (it is a {state['system']} checkpoint)",
                path=path,
                fix=fix,
            )
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            raise AscRayError(
                f"checkpoint does not fit {self.system.name} ({str(e).splitlines()[0][:200]})",
                path=path,
                fix=fix,
            ) from None
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location put it on the GPU

    @property
    def tag(self) -> str:
        return f"{self.system.name} split{self.split}"

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def prepare_inputs(self, batch: dict, gen: torch.Generator):
        """One training batch -> (spectrogram x, soft targets y, teacher logits zt or None), augmented."""
        s, a = self.system, self.cfg["augment"]
        wave = batch["wave"].to(self.device, non_blocking=True)
        if self.roll:
            wave = augment.roll(wave, self.roll, generator=gen)
        if self.irs is not None:
            wave = augment.dir_augment(
                wave, batch["device"], self.irs, p=a["dir_p"], device_a=DEVICE_A, generator=gen
            )
        x = self.frontend(wave)
        if s.fms:
            x = augment.freq_mixstyle(x, p=a["fms_p"], alpha=a["fms_alpha"], generator=gen)
        y = F.one_hot(batch["label"].to(self.device), N_CLASSES).float()
        zt = batch.get("teacher_logits")
        zt = None if zt is None else zt.to(self.device)
        if s.mixup:
            x, y, lam, perm = augment.mixup(x, y, alpha=a["mixup_alpha"], generator=gen)
            if zt is not None:
                zt = lam * zt + (1 - lam) * zt[perm.to(self.device)]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, zt

    def epoch_generator(self) -> torch.Generator:
        """This epoch's augmentation randomness on this rank: the returned generator feeds mixup, DIR, FMS and
        the roll; torch's global RNG (frequency masking, PaSST fmax jitter and patchout, dropout) is seeded
        too. Both from (train_seed, epoch, rank): ranks differ, a resumed epoch repeats itself."""
        seed = augment_seed(self.seed, self.epoch, self.rank)
        torch.manual_seed(seed + 1)
        return torch.Generator().manual_seed(seed)

    def train_epoch(self) -> dict:
        s = self.system
        self.model.train()
        self.frontend.train()
        gen = self.epoch_generator()
        self.batches.set_epoch(self.epoch)
        total = torch.zeros((), device=self.device)
        n = 0
        t0 = time.perf_counter()
        for batch in to_device(self.batches, self.device) if self.prefetch else self.batches:
            if self.trained_files is not None:
                self.trained_files.update(self.batches.files[i] for i in batch["index"].tolist())
            x, y, zt = self.prepare_inputs(batch, gen)
            with self._autocast():
                z = self.net(x)
            loss = compute_loss(s, self.cfg, z.float(), y, zt)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += loss.detach() * len(x)  # no per-step host sync
            n += len(x)
        dt = time.perf_counter() - t0
        return {
            "train_loss": float(total) / max(n, 1),
            "samples_per_s": n / max(dt, 1e-9),
            "lr": self.opt.param_groups[0]["lr"],
            "epoch_s": dt,
        }

    @torch.no_grad()
    def predict(
        self, files: list[str], state_dict: dict | None = None, model: torch.nn.Module | None = None
    ) -> np.ndarray:
        """Logits [len(files), 10] in eval mode (no augmentation), of the trained model, of its weights
        `state_dict`, or of `model` (e.g. the fp16 export: the input is cast to the model's precision)."""
        model = model.to(self.device) if model is not None else self.model
        if state_dict is not None:
            model = build_model(self.system, self.cfg, pretrained=False).to(self.device)
            model.load_state_dict(state_dict)
        model.eval()
        self.frontend.eval()
        out = []
        dtype = next(model.parameters()).dtype
        # the layout is set here for every model predicted with. fp16 on a CPU without fp16 units: channels-last
        # is 2.7x slower than the default layout (measured, docs/benchmarks.md), so fp16 runs in the default there
        channels_last = self.channels_last and not (dtype == torch.float16 and self.device.type == "cpu")
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        batches = ClipBatches(self.data.ds, self.data.store, files, EVAL_BATCH, shuffle=False)
        for batch in to_device(batches, self.device):
            x = self.frontend(batch["wave"].to(self.device)).to(dtype)
            x = x.contiguous(memory_format=layout)
            with self._autocast() if dtype == torch.float32 else nullcontext():
                out.append(model(x).float().cpu())
        return torch.cat(out).numpy()

    def evaluate(
        self, files: list[str], state_dict: dict | None = None, model: torch.nn.Module | None = None
    ):
        from asc_ray.metrics import evaluate

        logits = self.predict(files, state_dict, model)
        return logits, evaluate(logits, self.data.ds.labels(files), self.data.ds.devices(files))

    def fit(self, report: Callable[[dict, Path | None], None] | None = None) -> dict:
        """Train the remaining epochs (resumes from self.epoch); returns the final result dict."""
        self.fit_started = time.time()
        epochs = self.h["epochs"]
        select = self.cfg["train"]["select"]
        if select == "val" and not self.data.val_files:
            # a tiny split with one recording per scene has no holdout: fall back honestly, never to test
            self.log(
                f"[{self.tag}] no validation holdout (too few scenes with a recording to spare): "
                "selecting the last epoch"
            )
            select = "last"
        self.select = select
        every = max(1, self.cfg["train"]["eval_every"])
        while self.epoch < epochs:
            m = self.train_epoch()
            self.epoch += 1
            save = is_save_epoch(self.epoch, epochs, self.cfg["train"]["checkpoint_every"])
            # validation on rank 0 only: it alone selects and saves; DDP keeps the weights identical on all ranks
            if select == "val" and self.rank == 0 and (self.epoch % every == 0 or self.epoch == epochs):
                _, res = self.evaluate(self.data.val_files)
                m.update({f"val_{k}": v for k, v in res.metrics.items() if "/" not in k})
                if m["val_macro_acc"] > self.best["val_macro_acc"]:
                    self.best = {"val_macro_acc": m["val_macro_acc"], "epoch": self.epoch - 1}
                    self._note_best(save)
            elif select == "last":
                self.best = {"val_macro_acc": float("nan"), "epoch": self.epoch - 1}
                self._best_changed = True  # the last epoch's weights: current at the next checkpoint
            m.setdefault(
                "val_macro_acc", float("nan")
            )  # every report carries the selection metric (Tune needs it)
            m["epoch"] = self.epoch
            # the fraction of this unit's epochs done: Tune's ASHA compares trials on it, since epoch counts
            # differ between trials (train.min_steps raises them on small splits; a search may vary them)
            m["progress"] = self.epoch / epochs
            self.history.append(m)
            # the resumable state every train.checkpoint_every epochs and at the end (Ray gets it then only)
            ckpt = self.save_checkpoint() if self.rank == 0 and save else None
            val = "" if math.isnan(m["val_macro_acc"]) else f" val_macro_acc {100 * m['val_macro_acc']:.1f}%"
            self.log(
                f"[{self.tag}] epoch {self.epoch}/{epochs} loss {m['train_loss']:.3f}{val} "
                f"({m['epoch_s']:.0f}s, {m['samples_per_s']:.0f} samples/s)"
                + (" checkpoint" if ckpt is not None else "")
            )
            if report is not None:
                report(m, ckpt)
        return self.finish() if self.rank == 0 else {}

    def finish(self) -> dict:
        """The selected model on test, and the unit's outputs and record (asc_ray.outputs)."""
        from asc_ray.outputs import finish_unit

        return finish_unit(self)


def unit_params(trainer: Trainer) -> dict:
    """What this unit actually trains with, as MLflow params beside the flat config: its own seed, the
    effective warm-up and roll (the `baseline:` recipe overrides `bcbl:`) and the front-end's input."""
    h = trainer.h
    params = {
        "train_seed": trainer.seed,
        "train_epochs": h["epochs"],  # the family's epochs, or more where train.min_steps asks for them
        "frontend": trainer.system.frontend,
        "sample_rate": frontend_sample_rate(trainer.system.frontend),
        "input_shape": "x".join(map(str, input_shape(trainer.system.frontend))),
    }
    if trainer.system.family == "bcbl":
        params.update(warmup_steps=h["warmup_steps"], roll_s=h["roll_s"])
    return params


def unit_config(cfg: dict, system: System) -> dict:
    """The config keys this system reads (System.reads): what its trained model depends on. `train.epochs`
    is left out while it is off (0), so that units trained before the key existed keep their resume keys."""
    return {k: v for k, v in flatten(cfg).items() if system.reads(k) and (k, v) != ("train.epochs", 0)}


def unit_key(cfg: dict, system: System, split: int, data_key: str, upstream: str = "") -> str:
    """What a trained model depends on: the config keys it reads, the data, and its inputs' keys. A student's
    search space and replica count pick its model too."""
    parts = unit_config(cfg, system)
    if system.role == "student":
        parts["search"] = {k: v for k, v in cfg["students"]["search"].items() if system.reads(k)}
        parts["num_samples"] = cfg["students"]["num_samples"]
    return config_hash([parts, system.name, split, data_key, upstream])


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m asc_ray.train", description="Train and evaluate one model (no Ray)."
    )
    p.add_argument(
        "--system", required=True, help="teacher or student name, e.g. baseline, bcbl24, bcbl32_fms"
    )
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", type=int, required=True, choices=(5, 10, 25, 50, 100))
    p.add_argument("--output-dir", required=True)
    add_epochs_option(p)
    p.add_argument("--profile", default="full", choices=("full", "smoke"))
    p.add_argument("--config", default=None)
    p.add_argument(
        "--logits",
        default=None,
        help="logits table for kd_ensemble / tfs "
        "(default <output-dir>/logits/<teachers|kd_ensemble>_split<N>.parquet)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    a = p.parse_intermixed_args(argv)  # options may follow key=value overrides
    system = get_system(a.system)
    cfg = load_config(a.profile, a.config, with_epochs(a.overrides, a.epochs))
    out = Path(a.output_dir) / f"split{a.split}" / system.name
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, a.data_dir, a.output_dir, a.split, system, a.logits)
    print(
        f"[{system.name} split{a.split}] {len(data.train_files)} train / {len(data.val_files)} validation / "
        f"{len(data.test_files)} test clips; input {describe(system.frontend)}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}",
        flush=True,
    )
    trainer = Trainer(system, cfg, data, out, a.split, log=lambda m: print(m, flush=True))
    if (out / "checkpoint" / "checkpoint.pt").is_file() and not a.fresh:
        trainer.load_checkpoint(out / "checkpoint")
    result = trainer.fit()
    print(
        json.dumps(
            {
                k: v
                for k, v in result.items()
                if not k.startswith(("test_class_acc", "test_device_acc")) and k != "files"
            },
            indent=1,
            default=float,
        )
    )
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
