"""One model's training and evaluation: the loop every teacher and student of the pipeline runs.

Plain PyTorch, no Ray. The Ray layer calls `fit()` inside a Train worker or a Tune trial and passes a
`report` callback; `python -m asc_ray.train` runs the same code alone:

    python -m asc_ray.train --system baseline --data-dir D --split 100 --epochs 5 --output-dir O

Per step: waveform (cached, already at the model's sample rate) -> DIR (device a) -> log-mel front-end
(frequency masking / PaSST fmax jitter in training) -> Freq-MixStyle -> mixup -> model -> loss.
Each epoch: validation on the split's holdout (model selection), a checkpoint to resume from.
At the end: the selected model on test, DCASE output.csv, complexity, plots; teachers also write their
logits over the split's training files.
"""

from __future__ import annotations

import argparse
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
from asc_ray.config import config_hash, load_config
from asc_ray.data.cache import WaveformStore, build_cache
from asc_ray.data.dataset import ClipBatches
from asc_ray.data.holdout import split_holdout
from asc_ray.data.irs import load_irs
from asc_ray.data.tau import DEVICE_INDEX, N_CLASSES, TauDataset
from asc_ray.errors import AscRayError, run_cli
from asc_ray.features import build_frontend, frontend_sample_rate, input_shape
from asc_ray.io import atomic_write_json
from asc_ray.systems import System, get_system

DEVICE_A = DEVICE_INDEX["a"]
EVAL_BATCH = 256


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
) -> RunData:
    """Open the data, carve the holdout, reuse/build the waveform cache, load IRs and (for KD/TFS) the
    teacher logits: a Parquet path, or (files, logits) as the LogitAggregator hands them out."""
    from asc_ray.logits import read_logits

    paths = resolve_paths(cfg, data_dir, output_dir)
    ds = TauDataset.open(paths["data_dir"], cfg["data"]["split_dir"])
    split_files = ds.split_files(split)
    train_files, val_files = split_holdout(ds, split_files, cfg["data"]["holdout_fraction"], cfg["seed"])
    store = build_cache(
        ds, cache_file_list(ds), frontend_sample_rate(system.model), paths["cache_dir"], progress
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


def build_optimizer(system: System, cfg: dict, model: torch.nn.Module, steps_per_epoch: int):
    h = cfg[system.family]
    total = max(1, h["epochs"] * steps_per_epoch)
    if system.family == "passt":
        # Adam, linear warm-up over warmup_epochs, then linear decay to 1 % (CP-JKU's PaSST fine-tuning)
        opt = torch.optim.Adam(model.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        warm = max(1, h["warmup_epochs"] * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.01, 1.0 - 0.99 * (step - warm) / max(1, total - warm))
    else:
        # AdamW, cosine schedule with linear warm-up (the DCASE baseline's; 100 warm-up steps in the report)
        opt = torch.optim.AdamW(model.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        warm = max(1, min(h["warmup_steps"], total // 2))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compute_loss(system: System, cfg: dict, z: torch.Tensor, y: torch.Tensor, zt: torch.Tensor | None):
    if system.loss == "kd":
        return losses.kd_loss(z, zt, y, lam=cfg["kd"]["lam"], temperature=cfg["kd"]["temperature"])
    if system.loss == "focusnet":
        f = cfg["focusnet"]
        return losses.focusnet_loss(z, zt, y, alpha=f["alpha"], beta=f["beta"], variant=f["variant"])
    return torch.sum(-y * F.log_softmax(z, dim=-1), dim=-1).mean()  # CE with (possibly mixed) soft targets


def use_channels_last(system: System, cfg: dict) -> bool:
    v = cfg["train"]["channels_last"]
    return (system.model != "passt") if v == "auto" else bool(v)


# ------------------------------------------------------------------------------------------ the loop
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
        self.h = cfg[system.family]
        self.seed = cfg["seed"]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg["train"]["num_threads"] > 0:
            torch.set_num_threads(cfg["train"]["num_threads"])
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        self.frontend = build_frontend(system.model).to(self.device)
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
        self.opt, self.sched = build_optimizer(system, cfg, self.model, len(self.batches))
        self.epoch = 0
        self.history: list[dict] = []
        self.best: dict = {"val_macro_acc": -1.0, "epoch": -1}

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
        }

    def save_checkpoint(self) -> Path:
        final = self.out_dir / "checkpoint"
        tmp = self.out_dir / f".checkpoint.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(self.state(), tmp / "checkpoint.pt")
        best = final / "best.pt"
        if self.best.get("epoch") == self.epoch - 1 or not best.is_file():
            torch.save(self.model.state_dict(), tmp / "best.pt")
        else:
            shutil.copy2(best, tmp / "best.pt")
        old = self.out_dir / f".checkpoint.old-{os.getpid()}"
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, folder: str | Path) -> None:
        path = Path(folder) / "checkpoint.pt"
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, EOFError, OSError) as e:
            raise AscRayError(
                f"checkpoint does not fit {self.system.name} ({str(e).splitlines()[0][:200]})",
                path=path,
                fix="delete it (or run with --fresh) to train from scratch",
            ) from None
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        torch.set_rng_state(state["torch_rng"])
        if (Path(folder) / "best.pt").is_file() and Path(folder).resolve() != (
            self.out_dir / "checkpoint"
        ).resolve():
            (self.out_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / "best.pt", self.out_dir / "checkpoint" / "best.pt")
        self.log(f"[{self.tag}] resumed from epoch {self.epoch}")

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
        if s.dir and self.data.irs:
            wave = augment.dir_augment(
                wave, batch["device"], self.data.irs, p=a["dir_p"], device_a=DEVICE_A, generator=gen
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

    def train_epoch(self) -> dict:
        s = self.system
        self.model.train()
        self.frontend.train()
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.batches.set_epoch(self.epoch)
        total = torch.zeros((), device=self.device)
        n = 0
        t0 = time.perf_counter()
        for batch in self.batches:
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
    def predict(self, files: list[str], state_dict: dict | None = None) -> np.ndarray:
        """Logits [len(files), 10] in eval mode (no augmentation)."""
        model = self.model
        if state_dict is not None:
            model = build_model(self.system, self.cfg, pretrained=False).to(self.device)
            model.load_state_dict(state_dict)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
        model.eval()
        self.frontend.eval()
        out = []
        for batch in ClipBatches(self.data.ds, self.data.store, files, EVAL_BATCH, shuffle=False):
            x = self.frontend(batch["wave"].to(self.device))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out.append(model(x).float().cpu())
        return torch.cat(out).numpy()

    def evaluate(self, files: list[str], state_dict: dict | None = None):
        from asc_ray.metrics import evaluate

        logits = self.predict(files, state_dict)
        return logits, evaluate(logits, self.data.ds.labels(files), self.data.ds.devices(files))

    def fit(self, report: Callable[[dict, Path | None], None] | None = None) -> dict:
        """Train the remaining epochs (resumes from self.epoch); returns the final result dict."""
        epochs = self.h["epochs"]
        select = self.cfg["train"]["select"]
        if select == "val" and not self.data.val_files:
            # a tiny split with one recording per scene has no holdout: fall back honestly, never to test
            self.log(
                f"[{self.tag}] no validation holdout (one recording per scene): selecting the last epoch"
            )
            select = "last"
        self.select = select
        every = max(1, self.cfg["train"]["eval_every"])
        while self.epoch < epochs:
            m = self.train_epoch()
            self.epoch += 1
            if select == "val" and (self.epoch % every == 0 or self.epoch == epochs):
                _, res = self.evaluate(self.data.val_files)
                m.update({f"val_{k}": v for k, v in res.metrics.items() if "/" not in k})
                if m["val_macro_acc"] > self.best["val_macro_acc"]:
                    self.best = {"val_macro_acc": m["val_macro_acc"], "epoch": self.epoch - 1}
            elif select == "last":
                self.best = {"val_macro_acc": float("nan"), "epoch": self.epoch - 1}
            m.setdefault(
                "val_macro_acc", float("nan")
            )  # every report carries the selection metric (Tune needs it)
            m["epoch"] = self.epoch
            self.history.append(m)
            ckpt = self.save_checkpoint() if self.rank == 0 else None
            val = "" if math.isnan(m["val_macro_acc"]) else f" val_macro_acc {100 * m['val_macro_acc']:.1f}%"
            self.log(
                f"[{self.tag}] epoch {self.epoch}/{epochs} loss {m['train_loss']:.3f}{val} "
                f"({m['epoch_s']:.0f}s, {m['samples_per_s']:.0f} samples/s)"
            )
            if report is not None:
                report(m, ckpt)
        return self.finish() if self.rank == 0 else {}

    def finish(self) -> dict:
        """Evaluate the selected model on test and write every output file."""
        from asc_ray.complexity import check_student, export_fp16, measure
        from asc_ray.export import plot_class_accuracy, plot_confusion, write_dcase_output

        best = torch.load(
            self.out_dir / "checkpoint" / "best.pt", map_location=self.device, weights_only=True
        )
        test_logits, res = self.evaluate(self.data.test_files, best)
        model = build_model(self.system, self.cfg, pretrained=False)
        model.load_state_dict(best)
        cx = measure(model, (1, *input_shape(self.system.model)))
        out = self.out_dir
        torch.save(best, out / "model.pt")
        files = {"model": out / "model.pt"}
        if self.system.role == "student":
            check_student(cx, self.system.name)
            files["model_fp16"] = export_fp16(model, out / "model_fp16.pt")
        files["output"] = write_dcase_output(
            out / "output.csv", self.data.test_files, test_logits, cx.to_dict()
        )
        files["complexity"] = out / "output.complexity.json"
        from asc_ray.predict import write_unit_spec  # what asc-ray-predict / the MLflow model rebuild from

        files["unit"] = write_unit_spec(out, self.system, self.cfg)
        class_acc = {k.split("/", 1)[1]: v for k, v in res.metrics.items() if k.startswith("class_acc/")}
        files["class_plot"] = plot_class_accuracy(
            {self.system.name: class_acc},
            out / "class_accuracy.png",
            f"{self.system.name}, split {self.split}: class-wise test accuracy",
        )
        files["confusion_plot"] = plot_confusion(
            res.confusion, out / "confusion.png", f"{self.system.name}, split {self.split}: test confusion"
        )
        np.save(out / "confusion.npy", res.confusion)
        if self.system.feeds:
            # logits over the split's training files: what the next stage learns from
            split_logits = self.predict(self.data.split_files, best)
            np.save(out / "split_logits.npy", split_logits)
            files["split_logits"] = out / "split_logits.npy"
        result = {
            "system": self.system.name,
            "split": self.split,
            "role": self.system.role,
            "augment": self.system.augment,
            "selected_epoch": self.best["epoch"] + 1,
            "selected_on": getattr(self, "select", self.cfg["train"]["select"]),
            "val_macro_acc": self.best["val_macro_acc"],
            **{f"test_{k}": v for k, v in res.metrics.items()},
            "params": cx.params,
            "macs": cx.macs,
            "files": {k: str(v) for k, v in files.items()},
        }
        atomic_write_json(out / "result.json", result)
        self.log(
            f"[{self.tag}] done: test macro accuracy {100 * result['test_macro_acc']:.2f}% "
            f"(selected epoch {result['selected_epoch']} on {getattr(self, 'select', 'val')}), "
            f"{cx.params:,} params, {cx.macs / 1e6:.1f} M MACs"
        )
        return result


def unit_key(cfg: dict, system: System, split: int, data_key: str, upstream: str = "") -> str:
    """What a trained model depends on: the parts of the config it reads, the data, and its inputs' keys."""
    parts = {k: cfg[k] for k in ("seed", "augment", "train")}
    parts.update(
        {system.family: cfg[system.family], "data": {k: cfg["data"][k] for k in ("holdout_fraction",)}}
    )
    if system.model in cfg["channels"]:
        parts["channels"] = cfg["channels"][system.model]
    if system.loss == "kd":
        parts["kd"] = cfg["kd"]
    if system.loss == "focusnet":
        parts["focusnet"] = cfg["focusnet"]
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
    p.add_argument("--epochs", type=int, default=None, help="override the system's epochs")
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
    a = p.parse_args(argv)
    system = get_system(a.system)
    overrides = list(a.overrides)
    if a.epochs is not None:
        overrides.append(f"{system.family}.epochs={a.epochs}")
    cfg = load_config(a.profile, a.config, overrides)
    out = Path(a.output_dir) / f"split{a.split}" / system.name
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, a.data_dir, a.output_dir, a.split, system, a.logits)
    print(
        f"[{system.name} split{a.split}] {len(data.train_files)} train / {len(data.val_files)} validation / "
        f"{len(data.test_files)} test clips; device {'cuda' if torch.cuda.is_available() else 'cpu'}",
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
