"""A node's waveform cache: decode every WAV on the node, or copy the one cache file pre-flight built?

    python bench/node_cache.py [--data-dir D | --clips-per-class 200] [--sample-rate 44100] [--repeats 3]
                               [--shared-dir S]

On a cluster node, `--data-dir /mnt/efs/... --shared-dir /mnt/efs/tmp` measures decoding from and copying from
shared storage (the node's copy always goes to a local temp dir).

Three ways for a node to get its cache, each from cold files (their pages are dropped from the page cache
with posix_fadvise(DONTNEED) before each try, so the disk is read, as on a node that never saw them):

- `decode`: build_cache over the dataset's files (read + decode + resample every WAV: what each node did);
- `copy`:   CacheRef.open() of the finished cache into a fresh node folder (what each node does now);
- `stat`:   cache_keys() over the files (one stat() each: what every unit did before training).

Last line: `copy_vs_decode <ratio>` (how many times faster the copy is). Shared storage (NFS, EFS) is not
measured here: there every WAV is also an open() and a read round trip, and every stat() one more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, footer, header  # noqa: E402

from asc_ray.data.cache import CacheRef, build_cache, cache_file_list, cache_keys  # noqa: E402
from asc_ray.data.tau import TauDataset  # noqa: E402


def drop_from_page_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(path) -> float:
    """Share of the file's pages in the page cache (mincore), to check that the drop above worked."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    n = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # private map: touches no page
        try:
            anchor = ctypes.c_char.from_buffer(m)
            vec = (ctypes.c_ubyte * n)()
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) != 0:
                return float("nan")
            del anchor
        finally:
            m.close()
    return sum(v & 1 for v in vec) / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="default: a synthetic set in a temp dir")
    p.add_argument("--clips-per-class", type=int, default=200, help="size of the synthetic set (x10 clips)")
    p.add_argument("--sample-rate", type=int, default=44100, help="44100 (teachers) or 32000 (students)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--shared-dir", default=None, help="where the pre-flight build goes (default: a local temp dir)"
    )
    a = p.parse_args(argv)
    header("node_cache (decode every WAV vs copy the cache file vs stat every WAV)")
    tmp = Path(tempfile.mkdtemp(prefix="asc_bench_node_cache_"))
    shared_root = (
        Path(tempfile.mkdtemp(prefix="asc_bench_node_cache_", dir=a.shared_dir)) if a.shared_dir else tmp
    )
    try:
        if a.data_dir:
            data = Path(a.data_dir)
        else:
            from asc_ray.data.synth import generate

            data = generate(tmp / "tau", clips_per_class=a.clips_per_class, seed=0)
        ds = TauDataset.open(data)
        files = cache_file_list(ds)
        wavs = [ds.audio_path(f) for f in files]
        figure("clips", len(files), "d")
        figure("wav_MB", sum(w.stat().st_size for w in wavs) / 1e6)

        decode, copy, stat = [], [], []
        for i in range(a.repeats):
            drop_from_page_cache(wavs)
            wav_cold = statistics.mean(resident(w) for w in wavs[::50])  # a sample of the WAVs
            t = time.perf_counter()
            shared = build_cache(ds, files, a.sample_rate, shared_root / f"shared{i}", progress=False)
            decode.append(time.perf_counter() - t)

            drop_from_page_cache(wavs)
            t = time.perf_counter()
            cache_keys(ds, files, [a.sample_rate])
            stat.append(time.perf_counter() - t)

            drop_from_page_cache([shared.path / "waves.npy", shared.path / "index.json"])
            cold = resident(shared.path / "waves.npy")
            ref = CacheRef(shared.path.name, str(shared.path.parent), str(tmp / f"node{i}"))
            t = time.perf_counter()
            ref.open()
            copy.append(time.perf_counter() - t)
            size = (shared.path / "waves.npy").stat().st_size
            print(
                f"  try {i + 1}: decode {decode[-1]:.2f} s, copy {copy[-1]:.3f} s, stat {stat[-1]:.3f} s "
                f"(in the page cache before: WAVs {wav_cold:.0%}, cache file {cold:.0%})",
                flush=True,
            )
            shutil.rmtree(shared_root / f"shared{i}", ignore_errors=True)
            shutil.rmtree(tmp / f"node{i}", ignore_errors=True)
        d, c, s = statistics.median(decode), statistics.median(copy), statistics.median(stat)
        figure("cache_MB", size / 1e6)
        figure("decode_s", d, ".2f")
        figure("decode clips/s", len(files) / d, ".0f")
        figure("copy_s", c, ".3f")
        figure("copy MB/s", size / 1e6 / c, ".0f")
        figure("stat_s", s, ".3f")
        figure("stat us/file", s / len(files) * 1e6, ".1f")
        footer()
        figure("copy_vs_decode", d / c, ".1f")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shared_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
