"""A full-size rehearsal: how pre-flight, the caches, a unit's start and the driver's memory grow with the clip count.

    python bench/scale.py --clips N --out DIR [--keep] [--steps 12]

Generates a dataset in the exact TAU22 layout with N clips (230,350 = the real development set) in the official
proportions (split100 = 139,620 / 230,350 of the clips, test = 29,680 / 230,350, the 5-50 % splits nested in
split100 by recording, the rest of meta.csv in neither, as in TAU22), 1 s 44.1 kHz PCM_16 WAVs of the real
file size (88,244 bytes). The audio is a pool of synthetic scene clips (asc_ray.data.synth) written over and
over: what is measured here is I/O, decoding and bookkeeping, not learning. Then, printing `<figure> <value>`:

- `generation_s`: writing the dataset;
- `preflight_s`: the driver's pre-flight (asc_ray.pipeline.preflight: meta.csv and split checks, both
  waveform caches decoded and resampled, IRs, MLflow store) on a fresh output dir;
- `cache_gb`: the caches on disk;
- `driver_peak_rss_gb`: the pre-flight process's peak resident memory (what the pipeline's driver holds;
  it includes the pages of caches written through memory maps), and its anonymous part after pre-flight;
- `unit_start_s`: a kd_ensemble unit on split 100, from nothing to its first batch in hand, in a fresh
  process as a Ray worker would (open the data, holdout, the cache pre-flight handed over, teacher logits
  joined by filename, model, optimiser) - Ray's own worker start is not in it (docs/benchmarks.md, teacher_overhead);
- `student_samples/s`: that unit's training steps (batch 256, full profile) on batches drawn from the whole
  split's cache (random reads over the full memory map), --steps steps after one warm-up pass.
The dataset and its output dir are deleted at the end unless --keep (a full-size set is ~20 GB + ~26 GB).
Last line: `unit_start_s <seconds>`.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing as mp
import os
import queue
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import figure, footer, header, random_teacher_logits  # noqa: E402

REAL = {"total": 230_350, 100: 139_620, 50: 69_800, 25: 34_900, 10: 13_960, 5: 6_980, "test": 29_680}
CLIPS_PER_RECORDING = 10  # TAU22: 10 one-second segments per 10 s recording
POOL = 16  # distinct clips per scene in the audio pool
CITIES = (
    "barcelona",
    "helsinki",
    "lisbon",
    "london",
    "lyon",
    "milan",
    "paris",
    "prague",
    "stockholm",
    "vienna",
)


def _pool() -> dict[str, list[bytes]]:
    """POOL encoded WAV files per scene (device a), from the synthetic scene generator."""
    import soundfile as sf

    from asc_ray.data.synth import SR, _scene_clips
    from asc_ray.data.tau import SCENES

    rng = np.random.default_rng(0)
    out = {}
    for scene in SCENES:
        clips = _scene_clips(rng, scene, np.zeros((POOL, 2)), ["a"] * POOL)
        out[scene] = []
        for c in clips:
            buf = io.BytesIO()
            sf.write(buf, c.astype(np.float32), SR, format="WAV", subtype="PCM_16")
            out[scene].append(buf.getvalue())
    return out


def generate(root: Path, n: int) -> dict[str, int]:
    """The dataset in the TAU22 layout; returns its sizes."""
    from asc_ray.data.tau import DEVICES, SCENES

    rng = np.random.default_rng(n)
    n_train = round(n * REAL[100] / REAL["total"])
    n_test = round(n * REAL["test"] / REAL["total"])
    (root / "audio").mkdir(parents=True)
    pool = _pool()
    rows, recs = [], []  # meta rows; train recordings as (identifier, [files])
    test_rows = []
    train_devices, train_p = ("a", "b", "c", "s1", "s2", "s3"), (0.7, 0.06, 0.06, 0.06, 0.06, 0.06)
    made = 0
    loc = 1000
    while made < n:
        scene = SCENES[(made // CLIPS_PER_RECORDING) % len(SCENES)]
        city = CITIES[rng.integers(len(CITIES))]
        role = "train" if made < n_train else "test" if made < n_train + n_test else "unused"
        ident = f"{city}-{loc}"
        files = []
        for j in range(min(CLIPS_PER_RECORDING, n - made)):
            dev = (
                DEVICES[rng.integers(len(DEVICES))]
                if role == "test"
                else train_devices[rng.choice(6, p=train_p)]
            )
            fn = f"audio/{scene}-{city}-{loc}-{10 * j}-0-{dev}.wav"
            rows.append((fn, scene, ident, dev))
            files.append((fn, scene))
            made += 1
        loc += 1
        if role == "train":
            recs.append(files)
        elif role == "test":
            test_rows += files

    def write_audio(i: int) -> None:
        fn, scene = rows[i][0], rows[i][1]
        (root / fn).write_bytes(pool[scene][i % POOL])

    with ThreadPoolExecutor(8) as ex:  # I/O bound: a few writers keep the disk busy
        for _ in ex.map(write_audio, range(len(rows)), chunksize=512):
            pass

    def table(name, header, body):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(sorted(body))

    table("meta.csv", ("filename", "scene_label", "identifier", "source_label"), rows)
    order = [recs[i] for i in rng.permutation(len(recs))]  # nested splits: prefixes of one shuffled order
    sizes = {}
    for p in (5, 10, 25, 50, 100):
        want, chosen = round(n * REAL[p] / REAL["total"]), []
        for r in order:
            if len(chosen) >= want:
                break
            chosen += r
        table(f"split{p}.csv", ("filename", "scene_label"), chosen)
        sizes[p] = len(chosen)
    table("test.csv", ("filename", "scene_label"), test_rows)
    (root / "irs").mkdir()
    import soundfile as sf

    for k in range(3):
        ir = np.zeros(2205, np.float32)
        ir[0], ir[100 + k * 50] = 0.9, 0.3
        sf.write(root / "irs" / f"ir{k}.wav", ir, 44100, subtype="PCM_16")
    return {"clips": n, "test": len(test_rows), **{f"split{p}": s for p, s in sizes.items()}}


def _du_gb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()
    return int(out[0]) / 1e9 if out else float("nan")


def _cfg():
    from asc_ray.config import load_config

    return load_config("full", None, ["passt.pretrained=false", "train.num_threads=0"])


def _unit(data_dir: str, out: str, steps: int, cache, q) -> None:
    """In a fresh process (a Ray worker's view): unit start, then training steps over the whole split."""
    t0 = time.perf_counter()
    from asc_ray.data.dataset import ClipBatches
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, prepare_data

    t_import = time.perf_counter() - t0
    cfg = _cfg()
    system = get_system("kd_ensemble")
    table = Path(out) / "logits" / "teachers_split100.parquet"
    t0 = time.perf_counter()
    store = cache.open()  # the CacheRef pre-flight handed out, as asc_ray/pipeline/unit.py opens it
    data = prepare_data(cfg, data_dir, out, 100, system, logits=table, progress=False, store=store)
    trainer = Trainer(system, cfg, data, Path(out) / "unit", 100, log=lambda m: None)
    next(iter(trainer.batches))
    start = time.perf_counter() - t0
    # the steps: batches drawn at random from the whole split (reads spread over the full memory map); the
    # timed pass reads rows the warm-up did not touch, so page-cache misses count as they would in an epoch
    rng = np.random.default_rng(1)
    bs = trainer.h.batch_size
    n = min(len(data.train_files) // 2, bs * steps)
    order = rng.permutation(len(data.train_files))
    for pick in (order[:n], order[n : 2 * n]):
        trainer.batches = ClipBatches(
            data.ds,
            data.store,
            [data.train_files[i] for i in pick],
            bs,
            shuffle=True,
            seed=1,
            teacher_logits=data.teacher_logits[pick],
            drop_last=n > bs,
        )
        m = trainer.train_epoch()  # the first pass warms up the allocator; the second is timed
    q.put({"import_s": t_import, "unit_start_s": start, "sps": m["samples_per_s"]})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, required=True, help="230350 = the real development set")
    p.add_argument(
        "--out", required=True, help="a new folder: dataset in OUT/data, pipeline output in OUT/run"
    )
    p.add_argument("--steps", type=int, default=12, help="student training steps timed (batch 256)")
    p.add_argument("--keep", action="store_true", help="keep the dataset and caches")
    a = p.parse_args(argv)
    header(f"scale ({a.clips:,} clips)")
    root = Path(a.out)
    if root.exists() and any(root.iterdir()):
        print(f"error: {root} exists and is not empty", file=sys.stderr)
        return 2
    data, run = root / "data", root / "run"
    try:
        t = time.perf_counter()
        sizes = generate(data, a.clips)
        figure("generation_s", time.perf_counter() - t)
        print("# " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()), flush=True)
        figure("dataset_gb", _du_gb(data), ".2f")

        from asc_ray.pipeline.preflight import preflight

        run.mkdir(parents=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{run}/mlflow.db"
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        ctx = preflight(_cfg(), data, run, [5, 10, 25, 50, 100])
        figure("preflight_s", time.perf_counter() - t)
        figure("cache_gb", _du_gb(ctx.paths.cache_dir), ".2f")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        figure("driver_peak_rss_gb", peak / 1e6, ".2f")  # ru_maxrss is in KiB on Linux
        # RSS counts the file pages of the caches the driver wrote through memory maps (page cache the kernel
        # takes back under pressure); its own heap is the anonymous part
        anon = next(
            ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("RssAnon")
        )
        figure("driver_anon_rss_gb_after_preflight", int(anon.split()[1]) / 1e6, ".2f")
        print(f"# peak RSS before pre-flight {rss0 / 1e6:.2f} GB (the generator's, same process)", flush=True)

        random_teacher_logits(data, 100, run / "logits" / "teachers_split100.parquet")
        q = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(
            target=_unit, args=(str(data), str(run), a.steps, ctx.caches[32000], q)
        )
        proc.start()
        # a child that dies (killed, out of memory) puts nothing: say so instead of waiting forever
        while True:
            try:
                r = q.get(timeout=5)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise SystemExit(
                        f"the unit process died (exit code {proc.exitcode}) before it reported"
                    ) from None
        proc.join()
        figure("worker_import_s", r["import_s"])
        figure("student_samples/s", r["sps"])
        footer()
        figure("unit_start_s", r["unit_start_s"], ".2f")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
