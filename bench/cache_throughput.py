"""Waveform cache: build time (decode + resample every clip once) and read throughput of WaveformStore.rows.

    python bench/cache_throughput.py --data-dir D [--sample-rate 32000] [--batch 256] [--reads 20]

The build goes to a fresh temp folder (nothing reused). Reads are shuffled batches of rows, as ClipBatches
does in training: the first pass reads from disk (page cache cold only if the OS dropped it), later passes
from the page cache. Last line: `read clips/s <number>` (warm).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import figure, footer, header  # noqa: E402

from asc_ray.data.cache import build_cache, cache_file_list  # noqa: E402
from asc_ray.data.tau import TauDataset  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--passes", type=int, default=5, help="shuffled passes over the cache (the first is not counted)"
    )
    a = p.parse_args(argv)
    header("cache_throughput (build_cache, WaveformStore.rows)")
    ds = TauDataset.open(a.data_dir)
    files = cache_file_list(ds)
    tmp = Path(tempfile.mkdtemp(prefix="asc_bench_cache_"))
    try:
        t = time.perf_counter()
        store = build_cache(ds, files, a.sample_rate, tmp, progress=False)
        build_s = time.perf_counter() - t
        figure("build_clips", len(files), "d")
        figure("build_s", build_s, ".2f")
        figure("build clips/s", len(files) / build_s)
        t = time.perf_counter()
        build_cache(ds, files, a.sample_rate, tmp, progress=False)
        figure("reuse_s", time.perf_counter() - t, ".3f")
        mb = store.n_samples * 2 / 1e6
        rng = np.random.default_rng(0)
        rates = []
        for i in range(max(2, a.passes)):
            order = rng.permutation(len(store))
            t = time.perf_counter()
            for b in range(0, len(order), a.batch):
                store.rows(order[b : b + a.batch])
            rates.append(len(order) / (time.perf_counter() - t))
            print(f"  pass {i + 1}: {rates[-1]:.0f} clips/s", flush=True)
        warm = float(np.median(rates[1:]))
        figure("first_pass clips/s", rates[0], ".0f")
        figure("read MB/s (int16 on disk)", warm * mb, ".0f")
        footer()
        figure("read clips/s", warm, ".0f")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
