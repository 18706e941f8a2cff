"""One model's training: the loop every teacher and student of the pipeline runs. Plain PyTorch, no Ray: the
Ray layer calls `fit()` inside a Train worker or a Tune trial and passes a `report` callback;
`python -m asc_ray.train` runs the same code alone.

Per step: waveform (cached, already at the front-end's sample rate) -> roll (baseline recipe) -> DIR (device a)
-> log-mel front-end (frequency masking / PaSST fmax jitter in training) -> Freq-MixStyle -> mixup -> model -> loss.
Speed switches (train.*; off = the eager path above): `compile` (true, or reduce-overhead: CUDA graphs of the
model's step), `amp` (bf16 autocast), `channels_last`, `device_augment` (the epoch's augmentation draws made at
once and kept on the training device: asc_ray.augment.draw_epoch) and `prefetch` (asc_ray.data.dataset.to_device).
Each unit trains with its own seed (`unit_seed`: from seed, system and split); each data-parallel rank draws its
own augmentation randomness per epoch (`augment_seed`), while the weights start identical on every rank.
Each epoch: validation on the split's holdout (model selection); every train.checkpoint_every epochs and at the
end a checkpoint to resume from (asc_ray.train.checkpoint). `fit()` returns what finishing the unit needs
(asc_ray.train.outputs).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asc_ray import augment
from asc_ray.data.dataset import HOST_KEYS, ClipBatches, to_device
from asc_ray.data.tau import DEVICE_INDEX, N_CLASSES
from asc_ray.features import build_frontend
from asc_ray.layout import UnitRef
from asc_ray.losses import LOSSES
from asc_ray.metrics import evaluate
from asc_ray.models import build_model, get_architecture
from asc_ray.predict import Classifier, unit_spec
from asc_ray.systems import System, epochs, hparams
from asc_ray.train.checkpoint import Checkpoints, is_save_epoch
from asc_ray.train.data import RunData, shard

DEVICE_A = DEVICE_INDEX["a"]


# ---------------------------------------------------------------------------------------------- seeds
def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts, stable across runs, processes and Python versions (not hash())."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def unit_seed(seed: int, system: str, split: int) -> int:
    """A teacher's training seed (MLflow param `train_seed`): independent teachers, stable across resumes."""
    return derive_seed(seed, system, split)


def train_seed(system: System, cfg, split: int, seed: int | None = None) -> int:
    """The seed a unit trains with. Students of one seed share it (the same initial weights for the same
    architecture, the same batch order and augmentation draws: what distinguishes kd_ensemble from no_kd at a
    seed is then the distillation alone); teachers each have their own."""
    if system.role == "student":
        return derive_seed("student", cfg.seed if seed is None else seed, split)
    return unit_seed(cfg.seed, system.name, split)


def augment_seed(train_seed: int, epoch: int, rank: int) -> int:
    """Seed of one rank's augmentation randomness in one epoch (mixup, DIR, FMS, roll, masking, patchout):
    data-parallel ranks draw different augmentations; a resumed epoch draws what it drew the first time."""
    return derive_seed(train_seed, epoch, rank)


def use_channels_last(system: System, cfg) -> bool:
    v = cfg.train.channels_last
    return get_architecture(system.model).channels_last if v == "auto" else bool(v)


@dataclass
class Fitted:
    """A finished training: the selected model and how it ran (what finishing the unit needs)."""

    name: str  # the unit's name (asc_ray.layout.UnitRef.name): its console lines
    weights: Path  # the selected model's weights (checkpoint/best.pt)
    selected_epoch: int  # 1-based
    val_macro_acc: float  # NaN when selected without a holdout
    selected_on: str  # "val" | "last"
    train_seed: int
    started: float  # when fit() began (epoch seconds)
    device: torch.device
    channels_last: bool
    amp: bool


class Trainer:
    """Trains one system on one split; see the module docstring."""

    def __init__(
        self,
        system: System,
        cfg,
        data: RunData,
        out_dir: str | Path,
        split: int,
        log: Callable[[str], None] = print,
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        unit_key: str | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        init_weights: str | Path | None = None,
    ):
        self.system, self.cfg, self.data, self.split = system, cfg, data, split
        self.tag = UnitRef(system.name, split, seed).name  # on its console lines
        self.out_dir = Path(out_dir)
        self.log = log if rank == 0 else (lambda _msg: None)
        self.rank, self.world_size = rank, world_size
        self.prefetch = cfg.train.prefetch  # one batch in flight on a GPU (asc_ray.data.dataset.to_device)
        self.device_augment = cfg.train.device_augment
        self.h = hparams(system, cfg)
        self.seed = train_seed(system, cfg, split, seed)  # same on every rank: identical initial weights
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        self.frontend = build_frontend(system.frontend, cfg.augment.freqm).to(self.device)
        self.roll = round(getattr(self.h, "roll_s", 0.0) * data.store.sample_rate)  # max shift in samples
        # the device impulse responses live on the training device, copied there once
        self.irs = augment.ir_bank(data.irs, self.device) if system.dir and data.irs else None
        # a pretrained start (the pretraining unit's weights, asc_ray.train.pretrain), else the architecture's own
        self.model = build_model(system.model, cfg, Path(init_weights) if init_weights else True).to(
            self.device
        )
        self.channels_last = use_channels_last(system, cfg)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        mode = cfg.train.compile  # false | true | "reduce-overhead" (CUDA graphs on a GPU: static shapes)
        self.net = torch.compile(self.model, mode=None if mode is True else mode) if mode else self.model
        self.cudagraphs = mode == "reduce-overhead" and self.device.type == "cuda"
        if wrap_model is not None:
            self.net = wrap_model(self.net)
        amp = cfg.train.amp  # auto: bf16 on a GPU only; true: on any device (a CPU too)
        self.amp = self.device.type == "cuda" if amp == "auto" else bool(amp)
        files, logits = shard(data.train_files, data.teacher_logits, rank, world_size)
        b = batch_size or self.h.batch_size  # per rank: a data-parallel run may split the recipe's batch
        self.batches = ClipBatches(
            data.ds,
            data.store,
            files,
            b,
            shuffle=True,
            seed=self.seed,
            teacher_logits=logits,
            drop_last=len(files) > b,
        )
        self.epochs = epochs(system, cfg, len(self.batches))
        self.opt, self.sched = get_architecture(system.model).optimizer(
            self.model, self.h, len(self.batches), self.epochs
        )
        steps, warm = self.epochs * len(self.batches), getattr(self.h, "warmup_steps", 0)
        if 2 * warm > steps:  # the recipe's warm-up is kept: a split this small is said, not silently changed
            self.log(
                f"[{self.tag}] note: {warm} warm-up steps of {steps} in all: the learning rate peaks late"
            )
        self.checkpoints = Checkpoints(self.out_dir, unit_key, system.name, split, self.log, self.tag)
        self.epoch = 0
        self.history: list[dict] = []

    # -- checkpoints (asc_ray.train.checkpoint)
    @property
    def best(self) -> dict:
        """The selected epoch (0-based) and its validation figure."""
        return self.checkpoints.selection.best

    def save_checkpoint(self) -> Path:
        return self.checkpoints.save(self.model, self.opt, self.sched, self.epoch, self.history)

    def load_checkpoint(self, folder: str | Path | None) -> bool:
        """Resume from `folder` (or this unit's previous good checkpoint); False: none, training starts clean."""
        resumed = self.checkpoints.load(folder, self.device, self.model, self.opt, self.sched)
        if resumed is not None:
            self.epoch, self.history = resumed
        return resumed is not None

    # -- one epoch
    def prepare_inputs(self, batch: dict, gen: torch.Generator, draws: dict | None = None):
        """One training batch -> (spectrogram x, soft targets y, teacher logits zt or None), augmented: from
        `gen` step by step, or from the step's `draws` (train.device_augment)."""
        s, a = self.system, self.cfg.augment
        draw = augment.Eager(gen) if draws is None else augment.Drawn(draws)
        wave = batch["wave"].to(self.device, non_blocking=True)
        if self.roll:
            wave = draw.roll(wave, self.roll)
        if self.irs is not None:
            wave = draw.dir(wave, batch["device"], self.irs, a.dir_p, DEVICE_A)
        x = self.frontend(wave, draw.frontend)
        if s.fms:
            x = draw.fms(x, a.fms_p, a.fms_alpha)
        y = F.one_hot(batch["label"].to(self.device, non_blocking=True), N_CLASSES).float()
        zt = batch.get("teacher_logits")
        zt = None if zt is None else zt.to(self.device, non_blocking=True)
        if s.mixup:
            x, y, lam, perm = draw.mixup(x, y, a.mixup_alpha)
            if zt is not None:
                zt = lam * zt + (1 - lam) * zt[perm.to(self.device)]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, zt

    def epoch_draws(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """This epoch's augmentation draws (train.device_augment), from this epoch's generator, on the device:
        one copy per epoch."""
        a = self.cfg.augment
        draws = augment.draw_epoch(
            len(self.batches),
            min(self.batches.batch_size, len(self.batches.files)),  # every batch has this size (drop_last)
            gen,
            max_shift=self.roll,
            n_irs=0 if self.irs is None else self.irs.shape[0],
            fms_alpha=a.fms_alpha,
            mixup_alpha=a.mixup_alpha,
        )
        return {k: v.to(self.device) for k, v in draws.items()}

    def epoch_generator(self) -> torch.Generator:
        """This epoch's augmentation randomness on this rank: the returned generator feeds mixup, DIR, FMS and
        the roll; torch's global RNG (frequency masking, PaSST fmax jitter and patchout, dropout) is seeded
        too. Both from (train_seed, epoch, rank): ranks differ, a resumed epoch repeats itself."""
        seed = augment_seed(self.seed, self.epoch, self.rank)
        torch.manual_seed(seed + 1)
        return torch.Generator().manual_seed(seed)

    def train_epoch(self) -> dict:
        loss_fn = LOSSES[self.system.loss]
        self.model.train()
        self.frontend.train()
        gen = self.epoch_generator()
        self.batches.set_epoch(self.epoch)
        total = torch.zeros((), device=self.device)
        n = 0
        t0 = time.perf_counter()
        draws = self.epoch_draws(gen) if self.device_augment else None
        host = HOST_KEYS if draws is None else ("index",)  # device ids too go to the GPU
        batches = to_device(self.batches, self.device, host) if self.prefetch else self.batches
        for i, batch in enumerate(batches):
            x, y, zt = self.prepare_inputs(
                batch, gen, None if draws is None else augment.step_draws(draws, i)
            )
            if self.cudagraphs:  # a new step: the graph's previous outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext():
                z = self.net(x)
            loss = loss_fn(z.float(), y, zt, self.cfg)
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

    def classifier(self) -> Classifier:
        """The model being trained, as the one inference path runs it (validation)."""
        spec = unit_spec(self.system, self.cfg)
        return Classifier(
            spec, self.model, self.frontend, self.device, "training", self.channels_last, self.amp
        )

    def validate(self) -> dict[str, float]:
        files = self.data.val_files
        logits = self.classifier().logits_of(self.data.store, files)
        return evaluate(logits, self.data.ds.labels(files), self.data.ds.devices(files)).metrics

    # -- the loop
    def fit(self, report: Callable[[dict, Path | None], None] | None = None) -> Fitted | None:
        """Train the remaining epochs (resumes from self.epoch). Rank 0 returns the selected model."""
        started = time.time()
        n_epochs, select = self.epochs, self.cfg.train.select
        if select == "val" and not self.data.val_files:
            # a tiny split with one recording per scene has no holdout: fall back honestly, never to test
            self.log(
                f"[{self.tag}] no validation holdout (too few scenes with a recording to spare): "
                "selecting the last epoch"
            )
            select = "last"
        every = self.cfg.train.eval_every
        while self.epoch < n_epochs:
            m = self.train_epoch()
            self.epoch += 1
            save = is_save_epoch(self.epoch, n_epochs, self.cfg.train.checkpoint_every)
            # validation on rank 0 only: it alone selects and saves; DDP keeps the weights identical on all ranks
            if select == "val" and self.rank == 0 and (self.epoch % every == 0 or self.epoch == n_epochs):
                m.update({f"val_{k}": v for k, v in self.validate().items() if "/" not in k})
                self.checkpoints.selection.offer(self.epoch - 1, m["val_macro_acc"], self.model, save)
            elif select == "last":
                self.checkpoints.selection.last(self.epoch - 1)
            m.setdefault(
                "val_macro_acc", float("nan")
            )  # every report carries the selection metric (Tune needs it)
            m["epoch"] = self.epoch
            # the fraction of this unit's epochs done: Tune's ASHA compares trials on it, since epoch counts
            # differ between trials (train.min_steps raises them on small splits; a search may vary them)
            m["progress"] = self.epoch / n_epochs
            m["end_time"] = time.time()  # in the checkpoint: a resumed unit logs this epoch again as it was
            self.history.append(m)
            # the resumable state every train.checkpoint_every epochs and at the end (Ray gets it then only)
            ckpt = self.save_checkpoint() if self.rank == 0 and save else None
            val = "" if math.isnan(m["val_macro_acc"]) else f" val_macro_acc {100 * m['val_macro_acc']:.1f}%"
            self.log(
                f"[{self.tag}] epoch {self.epoch}/{n_epochs} loss {m['train_loss']:.3f}{val} "
                f"({m['epoch_s']:.0f}s, {m['samples_per_s']:.0f} samples/s)" + (" checkpoint" if ckpt else "")
            )
            if report is not None:
                report(m, ckpt)
        if self.rank != 0:
            return None
        return Fitted(
            name=self.tag,
            weights=self.checkpoints.best_weights,
            selected_epoch=self.best["epoch"] + 1,
            val_macro_acc=self.best["val_macro_acc"],
            selected_on=select,
            train_seed=self.seed,
            started=started,
            device=self.device,
            channels_last=self.channels_last,
            amp=self.amp,
        )
