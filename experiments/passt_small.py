"""The smoke profile's small PaSST teachers: which configuration learns from a few hundred clips at the cost the
old one had, chosen on a validation holdout carved from the training split, never on test.

    python experiments/passt_small.py --data-dir DEV --splits 100 --seeds 0,1 --candidates all
    python experiments/passt_small.py --data-dir DEV --splits 100,25 --seeds 0,1,2 --candidates old,current,cnn
    python experiments/passt_small.py --data-dir DEV --splits 100,25 --seeds 0,1,2 --candidates old,current --test

Each candidate is a change to the smoke profile's PaSST teacher passt_fms as it was before the search (`old`:
the architecture constants of asc_ray.models.passt, its `passt:` config section, or mixup); `current` is the
configuration as this checkout has it; `cnn` is the 32-BCBL teacher bcbl32_fms of the same profile, split, seed
and holdout. Each trains in this process through the pipeline's own code (prepare_data, Trainer; finish_unit
with --test) with `train.select=val` on a holdout of `--holdout` of the split's recordings, the config `seed`
giving the holdout and the teacher's training seed. Per (candidate, split, seed) one line: the selected
epoch's validation macro accuracy (what selection sees, so optimistic), the mean over the last 5 epochs (what
the schedule ends at: the pipeline keeps the last epoch), the CPU seconds of the training (this process's CPU
clock, validation passes included) and per epoch, the epochs. With --test also the selected model's test macro
accuracy: run it once, at the end, for the chosen configuration, the old one and cnn only. --jsonl appends each
record to a file and skips what it already holds (a search over several invocations; the summary covers the
file). Last line: `best_val_macro_acc <the best PaSST candidate's mean>`. Run it under `flock
/tmp/asc_ray_cpu.lock`: CPU seconds are compared as ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the benches' figure lines
from _common import figure, footer, header  # noqa: E402


def epochs(n: int) -> list[str]:
    """n epochs on the smoke profile's schedule: one epoch of warm-up, then down to last_lr over the rest."""
    return [f"passt.epochs={n}", f"passt.rampdown_epochs={n - 1}"]


# The smoke profile's PaSST teacher before this search (docs/benchmarks.md, "The smoke profile's PaSST teachers"):
# every candidate but `current` (the configuration as this checkout has it) and `cnn` starts from it.
OLD_MODEL = dict(embed_dim=64, depth=2, num_heads=4, patch_size=16, stride=(10, 10))
OLD_PATCHOUT_F = 0
OLD_CFG = [
    "passt.epochs=30",
    "passt.batch_size=8",
    "passt.lr=0.001",
    "passt.weight_decay=0.001",
    "passt.warmup_epochs=1",
    "passt.rampdown_start=1",
    "passt.rampdown_epochs=29",
    "passt.last_lr=0.01",
]

# name -> what differs from OLD: `model` (keys of asc_ray.models.passt.SMALL, the PaSST() arguments of the small
# model: embed_dim, depth, num_heads, patch_size, stride, drop_path_rate ...), `patchout_f` (SMALL_PATCHOUT_F),
# `cfg` (config overrides), `mixup` (the teacher mixes up as the CNN teachers do). 1 s clips give a 128 x 138
# spectrogram: patch 16 stride 10 = 12 x 13 tokens, stride 12 = 10 x 11, stride 16 = 8 x 8, patch 8 stride 8 =
# 16 x 17. The architecture changes get the epochs that OLD's CPU (30 epochs) buys at their measured CPU per
# epoch (split 100, x OLD's): depth 4 1.6, width 128 1.8, patch 8 stride 8 1.9, stride 12 0.75, stride 16 0.53,
# stride 16 with depth 3 0.68, with depth 4 0.75.
CANDIDATES: dict[str, dict] = {
    "current": {"as_is": True},
    "old": {},
    # first pass
    "lr3e-4": {"cfg": ["passt.lr=0.0003"]},
    "lr3e-3": {"cfg": ["passt.lr=0.003"]},
    "batch16": {"cfg": ["passt.batch_size=16"]},
    "flat": {"cfg": ["passt.rampdown_start=15", "passt.rampdown_epochs=15"]},
    "warm3": {"cfg": ["passt.warmup_epochs=3", "passt.rampdown_start=3", "passt.rampdown_epochs=27"]},
    "mixup": {"mixup": True},
    "patchout3": {"patchout_f": 3},
    "droppath": {"model": {"drop_path_rate": 0.1}},
    "d4-ep18": {"model": {"depth": 4}, "cfg": epochs(18)},
    "e128-ep16": {"model": {"embed_dim": 128}, "cfg": epochs(16)},
    "p8s8-ep16": {"model": {"patch_size": 8, "stride": (8, 8)}, "cfg": epochs(16)},
    "s16-ep56": {"model": {"stride": (16, 16)}, "cfg": epochs(56)},
    "s16-d4-ep40": {"model": {"stride": (16, 16), "depth": 4}, "cfg": epochs(40)},
    "ep60": {"cfg": epochs(60)},  # twice the budget: what more epochs alone would buy
    # second pass: more epochs at the same cost (stride 12 or 16), with a lower lr, mixup, depth 3
    "s16-ep56-lr3e-4": {"model": {"stride": (16, 16)}, "cfg": [*epochs(56), "passt.lr=0.0003"]},
    "s16-ep56-lr5e-4": {"model": {"stride": (16, 16)}, "cfg": [*epochs(56), "passt.lr=0.0005"]},
    "s16-ep56-mixup": {"model": {"stride": (16, 16)}, "cfg": epochs(56), "mixup": True},
    "s12-ep40": {"model": {"stride": (12, 12)}, "cfg": epochs(40)},
    "s16-d3-ep44": {"model": {"stride": (16, 16), "depth": 3}, "cfg": epochs(44)},
    # the 32-BCBL teacher of the same profile, split, seed and holdout
    "cnn": {"system": "bcbl32_fms"},
}
TEACHER = "passt_fms"
LAST = 5  # epochs averaged for val_last


def run_one(name: str, cand: dict, a, split: int, seed: int, work: Path) -> dict:
    import importlib

    import torch

    from asc_ray.config import load_config
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, finish_unit, prepare_data

    P = importlib.import_module("asc_ray.models.passt")  # the module (asc_ray.models.passt is the builder)

    unknown = set(cand) - {"model", "patchout_f", "cfg", "mixup", "system", "as_is"}
    if unknown:
        raise SystemExit(f"candidate {name}: unknown keys {sorted(unknown)}")
    overrides = [
        "train.select=val",
        f"data.holdout_fraction={a.holdout}",
        f"seed={seed}",
        *([] if cand.get("as_is") else OLD_CFG),
        *cand.get("cfg", []),
        *a.overrides,
    ]
    cfg = load_config("smoke", None, overrides)
    system = get_system(cand.get("system", TEACHER))
    if cand.get("mixup"):
        system = dataclasses.replace(system, mixup=True)
    saved = dict(P.SMALL), P.SMALL_PATCHOUT_F
    if not cand.get("as_is"):  # the builder reads these when it builds (training, validation, test)
        P.SMALL.clear()
        P.SMALL.update({**OLD_MODEL, **cand.get("model", {})})
        P.SMALL_PATCHOUT_F = cand.get("patchout_f", OLD_PATCHOUT_F)
    try:
        out = work / f"{name}_split{split}_seed{seed}"
        data = prepare_data(cfg, a.data_dir, work, split, system, progress=False)
        log = (lambda m: print("   ", m, flush=True)) if a.verbose else (lambda _m: None)
        trainer = Trainer(system, cfg, data, out, split, log=log)
        params = sum(p.numel() for p in trainer.model.parameters())
        c0, t0 = time.process_time(), time.perf_counter()
        fitted = trainer.fit()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        vals = [h["val_macro_acc"] for h in trainer.history]
        rec = {
            "candidate": name,
            "split": split,
            "seed": seed,
            "system": system.name,
            "val_macro_acc": fitted.val_macro_acc,
            "val_last": sum(vals[-LAST:]) / len(vals[-LAST:]),
            "selected_epoch": fitted.selected_epoch,
            "epochs": trainer.epochs,
            "steps": trainer.epochs * len(trainer.batches),
            "n_train": len(data.train_files),
            "n_val": len(data.val_files),
            "cpu_s": cpu,
            "wall_s": wall,
            "params": params,
            "threads": torch.get_num_threads(),
            "val_curve": vals,
        }
        if a.test:
            res = finish_unit(system, cfg, split, data, out, fitted, log=lambda _m: None)
            rec["test_macro_acc"] = res["test_macro_acc"]
    finally:
        P.SMALL.clear()
        P.SMALL.update(saved[0])
        P.SMALL_PATCHOUT_F = saved[1]
    return rec


def line(r: dict) -> str:
    test = f", test {100 * r['test_macro_acc']:.1f}" if "test_macro_acc" in r else ""
    return (
        f"{r['candidate']} split{r['split']} seed{r['seed']}: val_macro_acc {100 * r['val_macro_acc']:.1f} "
        f"(epoch {r['selected_epoch']}/{r['epochs']}), val_last{LAST} {100 * r['val_last']:.1f}{test}; "
        f"cpu_s {r['cpu_s']:.0f} ({r['cpu_s'] / r['epochs']:.1f}/epoch), {r['steps']} steps, "
        f"{r['n_train']} train / {r['n_val']} val clips, {r['params']:,} params"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="a development set, not the README's")
    p.add_argument("--splits", default="100")
    p.add_argument("--seeds", default="0")
    p.add_argument(
        "--candidates", default="old,current,cnn", help="all, or some of: " + ", ".join(CANDIDATES)
    )
    p.add_argument("--holdout", type=float, default=0.2, help="data.holdout_fraction (default 0.2)")
    p.add_argument("--test", action="store_true", help="also the test macro accuracy (the final pair only)")
    p.add_argument("--jsonl", default=None, help="append records here; skip those it holds")
    p.add_argument("--out", default=None, help="units' folders (default: a temp dir)")
    p.add_argument("--verbose", action="store_true", help="every epoch's log line")
    p.add_argument("overrides", nargs="*", help="config overrides for every candidate")
    a = p.parse_args(argv)
    names = list(CANDIDATES) if a.candidates == "all" else a.candidates.split(",")
    for n in names:
        if n not in CANDIDATES:
            raise SystemExit(f"unknown candidate {n!r}; known: {', '.join(CANDIDATES)}")
    warnings.filterwarnings("ignore")
    header("passt_small")
    work = Path(a.out or tempfile.mkdtemp(prefix="passt_small_"))
    jsonl = Path(a.jsonl) if a.jsonl else None
    done: list[dict] = []
    if jsonl and jsonl.is_file():
        done = [json.loads(s) for s in jsonl.read_text().splitlines() if s.strip()]
    key = lambda r: (r["candidate"], r["split"], r["seed"], bool(r.get("test_macro_acc") is not None))  # noqa: E731
    have = {key(r) for r in done}
    rows = []
    for split in (int(s) for s in a.splits.split(",")):
        for seed in (int(s) for s in a.seeds.split(",")):
            for n in names:
                if (n, split, seed, a.test) in have:
                    continue
                r = run_one(n, CANDIDATES[n], a, split, seed, work)
                print(line(r), flush=True)
                rows.append(r)
                if jsonl:
                    with jsonl.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    summary(done + rows if jsonl else rows)
    footer()
    return 0


def summary(rows: list[dict]) -> None:
    """Per (candidate, split): means over seeds, and CPU relative to `old` at that split."""
    last = {
        (r["candidate"], r["split"], r["seed"]): r for r in rows
    }  # a --test rerun replaces its search row
    groups: dict[tuple[str, int], list[dict]] = {}
    for (c, s, _seed), r in sorted(last.items()):
        groups.setdefault((c, s), []).append(r)
    base = {s: g for (c, s), g in groups.items() if c == "old"}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print("| candidate | split | seeds | val (selected) | val (last 5) | test | CPU s | x old |")
    print("|---|---|---|---|---|---|---|---|")
    best = -1.0
    for (c, s), g in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0] != "old", kv[0][0])):
        cpu = mean([r["cpu_s"] for r in g])
        ratio = cpu / mean([r["cpu_s"] for r in base[s]]) if s in base else math.nan
        tests = [r["test_macro_acc"] for r in g if r.get("test_macro_acc") is not None]
        test = f"{100 * mean(tests):.1f}" if tests else ""
        val = mean([r["val_macro_acc"] for r in g])
        print(
            f"| {c} | {s} | {','.join(str(r['seed']) for r in g)} | {100 * val:.1f} | "
            f"{100 * mean([r['val_last'] for r in g]):.1f} | {test} | {cpu:.0f} | {ratio:.2f} |",
            flush=True,
        )
        if c != "cnn":
            best = max(best, val)
    figure("best_val_macro_acc", 100 * best)


if __name__ == "__main__":
    main()
