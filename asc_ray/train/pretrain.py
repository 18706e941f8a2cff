"""PaSST pretraining on the corpus that stands in for AudioSet (asc_ray.data.corpus): once per run, before any
split's PaSST teacher, which then fine-tunes from its weights with a new 10-class head, as the full profile's
teachers fine-tune from hear21passt's AudioSet checkpoint. Plain PyTorch, no Ray: the pipeline runs
`pretrain()` as a unit of its graph (asc_ray.pipeline), `python -m asc_ray.train.pretrain` alone.

    <unit folder>/weights.pt        the pretrained PaSST's state_dict (its head: the corpus's classes)
    <unit folder>/checkpoint.pt     the resumable state, every epoch (a resumed unit redoes no epoch)
    <unit folder>/result.json       the record, written last: key, epochs, corpus, holdout accuracy per epoch

The corpus's recordings are split once: 10 % of them are a holdout whose accuracy each epoch says how far
pretraining got (information: nothing is selected on it; the last epoch's weights are kept).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asc_ray import augment
from asc_ray.config import config_hash, flatten, load_config
from asc_ray.data.audio import read_wav
from asc_ray.data.corpus import generate_corpus, read_corpus
from asc_ray.errors import AscRayError
from asc_ray.features import build_frontend
from asc_ray.io import atomic_torch_save, atomic_write_json
from asc_ray.models.passt import passt
from asc_ray.optim import exp_warmup_linear_down
from asc_ray.train.outputs import read_record
from asc_ray.train.trainer import derive_seed

WEIGHTS, CHECKPOINT, RECORD = "weights.pt", "checkpoint.pt", "result.json"
HOLDOUT = 0.1  # of the corpus's recordings: how far pretraining got, for information
EVAL_BATCH = 64


# what the code below does beside its config: bump it when a change retrains (asc_ray.pipeline.keys)
RECIPE = 1


def pretrained_models(cfg) -> tuple[str, ...]:
    """The architectures this config pretrains on its corpus: PaSST where pretrain.corpus names one and PaSST has
    no checkpoint of its own (passt.pretrained=true: AudioSet's weights, and the stage is a no-op)."""
    return ("passt",) if cfg.pretrain.corpus != "none" and not cfg.passt.pretrained else ()


def pretrain_key(cfg, model: str = "passt") -> str:
    """What a pretraining depends on: the pretrain section (its corpus and training), the architecture's size and
    weight decay, the augmentations it uses (masking, Freq-MixStyle) and the run's seed."""
    used = (
        "seed",
        f"{model}.size",
        f"{model}.weight_decay",
        "augment.freqm",
        "augment.fms_p",
        "augment.fms_alpha",
    )
    parts = {k: v for k, v in flatten(cfg).items() if k.startswith("pretrain.") or k in used}
    if (
        cfg.train.epochs
    ):  # a set-up check (--epochs N) pretrains N epochs too; the next run without it retrains
        parts["train.epochs"] = cfg.train.epochs
    return config_hash([parts, "pretrain", model, RECIPE])


def corpus_dir(cfg, cache_dir: str | Path) -> Path:
    """Where the run's corpus lies: in the cache folder, named by its arguments (a run with the same ones, on any
    output dir sharing the cache, reuses it)."""
    p = cfg.pretrain
    return Path(cache_dir) / f"corpus_c{p.classes}_n{p.clips_per_class}_s{p.corpus_seed}"


def pretrain_dir(cfg, cache_dir: str | Path, model: str = "passt") -> Path:
    """The pretraining unit's folder: in the cache folder, by its key, so that every run sharing the cache (another
    output dir, --fresh) reuses it; like the waveform caches, it is derived from the config alone."""
    return Path(cache_dir) / "pretrain" / f"{model}-{pretrain_key(cfg, model)[:16]}"


def pretrained_weights(cfg, cache_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """The weights a PaSST teacher trained alone (`python -m asc_ray.train`) starts from: the pipeline's
    pretraining unit when the cache holds it, else made here first (the same unit, the same folder)."""
    out = pretrain_dir(cfg, cache_dir)
    key = pretrain_key(cfg)
    rec = read_record(out, key)
    if rec is None:
        log(f"[pretrain passt] pretraining first (pretrain.corpus={cfg.pretrain.corpus}) into {out}")
        rec = pretrain(cfg, corpus_dir(cfg, cache_dir), out, key, log=log)
    return Path(rec["weights"])


def _load(root: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[str]]:
    """(waves [n, samples] float32, class index [n], holdout mask [n], class names) of the corpus."""
    files, labels = read_corpus(root)
    names = sorted(set(labels))
    y = np.array([names.index(x) for x in labels])
    waves = torch.from_numpy(np.stack([read_wav(root / f) for f in files]))
    recording = np.array(["-".join(Path(f).stem.split("-")[:2]) for f in files])
    ids = sorted(set(recording))
    rng = np.random.default_rng(0)
    held = set(rng.choice(ids, max(1, round(HOLDOUT * len(ids))), replace=False))
    return waves, y, np.array([r in held for r in recording]), names


def _holdout_accuracy(model, frontend, waves: torch.Tensor, y: np.ndarray, device: torch.device) -> float:
    model.eval()
    frontend.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(y), EVAL_BATCH):
            z = model(frontend(waves[i : i + EVAL_BATCH].to(device)))
            right += int((z.argmax(1).cpu().numpy() == y[i : i + EVAL_BATCH]).sum())
    return right / max(1, len(y))


def pretrain(
    cfg,
    corpus: str | Path,
    out: str | Path,
    key: str = "",
    log: Callable[[str], None] = print,
    report: Callable[[dict], None] | None = None,
    record: bool = True,
) -> dict:
    """Pretrain the configured PaSST (passt.size) on the corpus (made there first when missing); returns the
    record, written to the folder last unless `record` is False (the caller writes it, after its own work).
    Resumes from its checkpoint when one of this key is there."""
    p, a = cfg.pretrain, cfg.augment
    epochs = cfg.train.epochs or p.epochs  # train.epochs: every unit, this one too, trains exactly that many
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = generate_corpus(Path(corpus), p.classes, p.clips_per_class, p.corpus_seed)
    waves, y, held, names = _load(corpus)
    train_idx = np.flatnonzero(~held)
    seed = derive_seed("pretrain", cfg.seed)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = passt(pretrained=False, size=cfg.passt.size, n_classes=len(names)).to(device)
    frontend = build_frontend("passt", a.freqm).to(device)
    steps = max(1, len(train_idx) // p.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=cfg.passt.weight_decay)
    # one epoch of exponential warm-up, then a linear ramp down to 1 % at the end (the PaSST teachers' shape)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: exp_warmup_linear_down(s // steps, 1, 1, max(1, epochs - 1), 0.01)
    )
    epoch, history = 0, []
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            epoch, history = state["epoch"], state["history"]
            log(f"[pretrain passt] resumed after epoch {epoch}")
    while epoch < epochs:
        model.train()
        frontend.train()
        gen = torch.Generator().manual_seed(seed + epoch)
        torch.manual_seed(seed + epoch + 1)  # masking, fmax jitter
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        t0, total = time.perf_counter(), 0.0
        for i in range(steps):
            idx = order[i * p.batch_size : (i + 1) * p.batch_size]
            x = frontend(waves[idx].to(device))
            x = augment.freq_mixstyle(x, p=a.fms_p, alpha=a.fms_alpha, generator=gen)
            loss = F.cross_entropy(model(x), torch.from_numpy(y[idx]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        epoch += 1
        m = {
            "epoch": epoch,
            "train_loss": total / steps,
            "holdout_acc": _holdout_accuracy(model, frontend, waves[held], y[held], device),
            "epoch_s": time.perf_counter() - t0,
            "end_time": time.time(),
        }
        history.append(m)
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
        atomic_torch_save(ckpt, {**state, "epoch": epoch, "history": history, "key": key})
        log(
            f"[pretrain passt] epoch {epoch}/{epochs} loss {m['train_loss']:.3f} holdout accuracy "
            f"{100 * m['holdout_acc']:.1f}% ({m['epoch_s']:.0f}s)"
        )
        if report is not None:
            report(m)
    atomic_torch_save(out / WEIGHTS, model.state_dict())
    rec = {
        "key": key,
        "role": "pretrain",
        "weights": str(out / WEIGHTS),
        "corpus": str(corpus),
        "classes": len(names),
        "train_clips": int(len(train_idx)),
        "holdout_clips": int(held.sum()),
        "epochs": epochs,
        "holdout_acc": history[-1]["holdout_acc"] if history else math.nan,
        "history": history,
    }
    if record:
        atomic_write_json(out / RECORD, rec)  # last: a unit stopped before it is not done
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m asc_ray.train.pretrain", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the unit folder (weights.pt, result.json)")
    ap.add_argument("--corpus", type=Path, required=True, help="the corpus folder (made there when missing)")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. pretrain.epochs=5")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.profile, None, args.overrides)
        rec = pretrain(cfg, args.corpus, args.out)
    except AscRayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pretrained: {rec['weights']} (holdout accuracy {100 * rec['holdout_acc']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
