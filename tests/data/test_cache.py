import os
import pickle

import numpy as np
import pytest
from data_helpers import assert_user_error, write_tsv, write_wav

import asc_ray.data.cache as cache_mod
from asc_ray.data.audio import read_wav
from asc_ray.data.cache import COMPLETE, WaveformStore, build_cache
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
