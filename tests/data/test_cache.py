import os
import pickle

import numpy as np
import pytest
from data_helpers import assert_user_error, write_tsv, write_wav
from helpers.console import said

import asc_ray.data.cache as cache_mod
from asc_ray.data.audio import read_wav
from asc_ray.data.cache import CACHE_LINE, COMPLETE, COPIED, REUSED, WaveformStore, build_cache
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []

    def counting(path, *a, **k):
        calls.append(path)
        return read_wav(path, *a, **k)

    monkeypatch.setattr(cache_mod, "read_wav", counting)
    return calls


def test_build_then_hit_without_decoding(synth_dataset, tmp_path, count_decodes):
    ds = TauDataset.open(synth_dataset)
    files = ds.split_files(25)
    store = build_cache(ds, files, 44100, tmp_path, progress=False)
    assert len(count_decodes) == len(files) == len(store)
    assert store.files == sorted(files) and store.n_samples == 44100 and store.sample_rate == 44100
    f = files[3]
    assert np.abs(store.get(f) - read_wav(ds.audio_path(f))).max() <= 1 / 32768
    rows = store.rows([5, 1, 5])
    assert rows.dtype == np.float32 and rows.shape == (3, 44100)
    assert np.array_equal(rows[0], store.rows([5])[0]) and np.array_equal(rows[1], store.get(store.files[1]))

    count_decodes.clear()
    again = build_cache(ds, list(reversed(files)), 44100, tmp_path, progress=False)  # same set, other order
    assert count_decodes == [] and again.path == store.path
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [store.path.name]  # no temp debris left

    clone = pickle.loads(pickle.dumps(store))  # Ray ships it by path, not by content
    assert len(pickle.dumps(store)) < 1000 and np.array_equal(clone.get(f), store.get(f))


def test_changed_file_rebuilds(tiny_dataset, tmp_path, count_decodes):
    tmp_path = tmp_path / "cache"
    ds = TauDataset.open(tiny_dataset)
    files = ds.test_files()
    first = build_cache(ds, files, 16000, tmp_path, progress=False)
    assert first.path.name.startswith("16000_") and first.n_samples == 16000
    st = ds.audio_path(files[0]).stat()
    os.utime(ds.audio_path(files[0]), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # `touch`
    count_decodes.clear()
    second = build_cache(ds, files, 16000, tmp_path, progress=False)
    assert second.path != first.path and len(count_decodes) == len(files)
    assert (first.path / COMPLETE).is_file()  # the old cache is left intact


def test_half_written_cache_is_ignored_and_replaced(tiny_dataset, tmp_path, count_decodes):
    tmp_path = tmp_path / "cache"
    ds = TauDataset.open(tiny_dataset)
    files = ds.test_files()
    good = build_cache(ds, files, 32000, tmp_path, progress=False)
    (good.path / COMPLETE).unlink()  # as if killed before the marker was written
    (good.path / "waves.npy").write_bytes(b"junk")
    debris = tmp_path / f".tmp-{good.path.name}-abc"
    debris.mkdir()
    with pytest.raises(AscRayError):
        WaveformStore(good.path)
    count_decodes.clear()
    store = build_cache(ds, files, 32000, tmp_path, progress=False)
    assert len(count_decodes) == len(files) and (store.path / COMPLETE).is_file()
    assert not debris.exists()
    assert np.abs(store.get(files[0])).max() > 0


def test_bad_file_fails_clearly_and_leaves_no_cache(tiny_dataset, tmp_path):
    tmp_path = tmp_path / "cache"
    ds = TauDataset.open(tiny_dataset)
    files = ds.test_files()
    finished = build_cache(ds, files[:2], 44100, tmp_path, progress=False)
    bad = ds.audio_path(files[-1])
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(AscRayError) as e:
        build_cache(ds, files, 44100, tmp_path, progress=False)
    assert_user_error(e, bad.name)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [finished.path.name]
    assert len(build_cache(ds, files[:2], 44100, tmp_path, progress=False)) == 2  # still a hit


def test_missing_audio_file(tiny_dataset, tmp_path):
    ds = TauDataset.open(tiny_dataset)
    files = ds.test_files()
    ds.audio_path(files[0]).unlink()
    with pytest.raises(AscRayError) as e:
        build_cache(ds, files, 44100, tmp_path, progress=False)
    assert_user_error(e, files[0].split("/")[-1], "not found")


def test_resampling_keeps_a_sine_at_its_frequency(tmp_path):
    fn = "audio/park-lyon-1-0-0-a.wav"
    t = np.arange(44100) / 44100
    write_wav(tmp_path / fn, 0.5 * np.sin(2 * np.pi * 1000 * t), subtype="FLOAT")
    write_tsv(
        tmp_path / "meta.csv",
        ("filename", "scene_label", "identifier", "source_label"),
        [(fn, "park", "lyon-1", "a")],
    )
    store = build_cache(TauDataset.open(tmp_path), [fn], 32000, tmp_path / "cache", progress=False)
    x = store.get(fn)
    assert x.shape == (32000,)
    spectrum = np.abs(np.fft.rfft(x))
    assert np.argmax(spectrum) * 32000 / len(x) == pytest.approx(1000, abs=1)
    assert np.abs(x[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)  # amplitude kept (away from edges)


def test_bad_sample_rate(tiny_dataset, tmp_path):
    ds = TauDataset.open(tiny_dataset)
    with pytest.raises(AscRayError) as e:
        build_cache(ds, ds.test_files(), 0, tmp_path)
    assert_user_error(e, "sample rate")


# ------------------------------------------------------------------ keys computed once, per-node copies
def refuse_audio_access(monkeypatch):
    """From here on, stat()ing or decoding an audio file fails the test (what a unit must never do)."""

    def refuse(*a, **k):
        raise AssertionError("an audio file was stat()ed or decoded")

    monkeypatch.setattr(cache_mod, "_stat", refuse)
    monkeypatch.setattr(cache_mod, "read_wav", refuse)


def test_cache_keys_stat_each_file_once_for_every_rate(tiny_dataset, monkeypatch):
    ds = TauDataset.open(tiny_dataset)
    files = ds.test_files()
    separate = {sr: cache_mod.cache_key(ds, files, sr) for sr in (0, 32000, 44100)}
    stats = []
    real = cache_mod._stat
    monkeypatch.setattr(cache_mod, "_stat", lambda d, f: stats.append(f) or real(d, f))
    # the same keys as one cache_key() per rate (existing caches and resume keys stay valid) ...
    assert cache_mod.cache_keys(ds, files, [0, 32000, 44100]) == separate
    assert sorted(stats) == sorted(files)  # ... for one stat() per file


def _shared_cache(tiny_dataset, tmp_path):
    ds = TauDataset.open(tiny_dataset)
    files = ds.test_files()
    key = cache_mod.cache_keys(ds, files, [32000])[32000]
    store = build_cache(ds, files, 32000, tmp_path / "shared", progress=False, key=key)
    assert store.path.name == cache_mod.cache_name(32000, key)
    return store, files


def test_a_node_copies_the_shared_cache_once_then_reuses_it(tiny_dataset, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    shared, files = _shared_cache(tiny_dataset, tmp_path)
    refuse_audio_access(monkeypatch)
    ref = cache_mod.CacheRef(shared.path.name, str(shared.path.parent), str(tmp_path / "node"))
    lines: list[str] = []
    with ThreadPoolExecutor(4) as pool:  # four units starting at once on one node
        stores = list(pool.map(lambda _: ref.open(log=lines.append), range(4)))
    copied = [ln for ln in lines if said(CACHE_LINE, ln) and said(COPIED, said(CACHE_LINE, ln)["what"])]
    assert len(copied) == 1 and len(lines) == 4, lines
    assert all(s.path == tmp_path / "node" / shared.path.name for s in stores)
    assert np.array_equal(stores[0].rows(range(len(files))), shared.rows(range(len(files))))
    assert [p.name for p in (tmp_path / "node").iterdir() if p.is_dir()] == [shared.path.name]  # no debris
    lines.clear()
    ref.open(log=lines.append)  # a later unit on the node
    assert said(CACHE_LINE, lines[0])["what"] == REUSED


def test_one_machine_reads_the_preflight_build_without_copying(tiny_dataset, tmp_path, monkeypatch):
    shared, _ = _shared_cache(tiny_dataset, tmp_path)
    refuse_audio_access(monkeypatch)
    ref = cache_mod.CacheRef(shared.path.name, str(shared.path.parent), str(shared.path.parent))
    assert ref.open().path == shared.path
    assert [p.name for p in (tmp_path / "shared").iterdir() if p.is_dir()] == [shared.path.name]


def test_node_cache_dir_is_the_nodes_own(monkeypatch, tmp_path):
    monkeypatch.setenv(cache_mod.NODE_CACHE_ENV, str(tmp_path / "nvme"))
    assert cache_mod.node_cache_dir() == tmp_path / "nvme"
    monkeypatch.delenv(cache_mod.NODE_CACHE_ENV)
    assert cache_mod.node_cache_dir().name == "asc_ray_cache"


def test_a_node_without_the_shared_cache_or_room_for_it_says_so(tiny_dataset, tmp_path, monkeypatch):
    shared, _ = _shared_cache(tiny_dataset, tmp_path)
    gone = cache_mod.CacheRef("32000_0123456789abcdef", str(shared.path.parent), str(tmp_path / "node"))
    with pytest.raises(AscRayError) as e:
        gone.open()
    assert_user_error(e, "32000_0123456789abcdef", "pre-flight")
    full = cache_mod.CacheRef(shared.path.name, str(shared.path.parent), str(tmp_path / "node"))
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(AscRayError) as e:
        full.open()
    assert_user_error(e, "disk space", "data.cache_dir")
    assert not any(p.is_dir() for p in (tmp_path / "node").iterdir())  # nothing half-copied is left


def test_a_unit_given_the_cache_touches_no_audio_file(synth_dataset, tmp_path, monkeypatch):
    """prepare_data with the pipeline's store (what run_unit passes) stats and decodes nothing."""
    from asc_ray.config import load_config
    from asc_ray.data.cache import cache_file_list
    from asc_ray.systems import get_system
    from asc_ray.train import prepare_data

    ds = TauDataset.open(synth_dataset)
    shared = build_cache(ds, cache_file_list(ds), 32000, tmp_path / "shared", progress=False)
    ref = cache_mod.CacheRef(shared.path.name, str(shared.path.parent), str(tmp_path / "node"))
    refuse_audio_access(monkeypatch)
    cfg = load_config("smoke", None, [])
    data = prepare_data(cfg, synth_dataset, tmp_path / "out", 25, get_system("baseline"), store=ref.open())
    assert data.store.path == tmp_path / "node" / shared.path.name and data.train_files
