import numpy as np
import pytest
import torch

from asc_ray.data.cache import build_cache
from asc_ray.data.dataset import HOST_KEYS, ClipBatches, to_device
from asc_ray.data.tau import DEVICES, TauDataset
from asc_ray.errors import AscRayError


@pytest.fixture(scope="module")
def data(synth_dataset, tmp_path_factory):
    ds = TauDataset.open(synth_dataset)
    files = ds.split_files(50)
    store = build_cache(ds, files, 32000, tmp_path_factory.mktemp("cache"), progress=False)
    return ds, store, files


def test_batches_shapes_and_content(data):
    ds, store, files = data
    batches = ClipBatches(ds, store, files, batch_size=16, shuffle=False)
    out = list(batches)
    assert len(out) == len(batches) == -(-len(files) // 16)
    b = out[0]
    assert b["wave"].shape == (16, 32000) and b["wave"].dtype == torch.float32
    assert b["label"].dtype == b["device"].dtype == b["index"].dtype == torch.int64
    assert "teacher_logits" not in b
    assert b["index"].tolist() == list(range(16))
    assert b["label"].tolist() == ds.labels(files[:16]).tolist()
    assert [DEVICES[d] for d in b["device"]] == ds.devices(files[:16])
    assert torch.equal(b["wave"][3], torch.from_numpy(store.get(files[3])))
    assert sum(len(x["index"]) for x in out) == len(files)


def test_shuffle_is_seeded_by_seed_and_epoch(data):
    ds, store, files = data

    def order(seed, epoch, drop_last=False):
        batches = ClipBatches(ds, store, files, batch_size=7, shuffle=True, seed=seed, drop_last=drop_last)
        batches.set_epoch(epoch)
        return torch.cat([b["index"] for b in batches]).tolist()

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(len(files))) and order(0, 0) != list(range(len(files)))
    assert order(0, 1) != order(0, 0) and order(1, 0) != order(0, 0)
    dropped = order(0, 0, drop_last=True)
    assert len(dropped) == len(files) // 7 * 7 and dropped == order(0, 0)[: len(dropped)]


def test_teacher_logits_stay_aligned_with_files(data):
    ds, store, files = data
    logits = np.random.default_rng(0).normal(size=(len(files), 10)).astype(np.float32)
    batches = ClipBatches(ds, store, files, batch_size=8, shuffle=True, seed=5, teacher_logits=logits)
    for b in batches:
        assert torch.equal(b["teacher_logits"], torch.from_numpy(logits[b["index"].numpy()]))
        i = int(b["index"][0])
        assert torch.equal(b["wave"][0], torch.from_numpy(store.get(files[i])))
    with pytest.raises(AscRayError, match="shape"):
        ClipBatches(ds, store, files, 8, False, teacher_logits=logits[:-1])


def test_file_missing_from_cache(data, synth_dataset):
    ds, store, _ = data
    with pytest.raises(AscRayError, match="not in the waveform cache"):
        ClipBatches(ds, store, ds.test_files(), 8, False)


def test_to_device_on_cpu_is_the_batches_themselves(data):
    ds, store, files = data
    batches = ClipBatches(ds, store, files, batch_size=16, shuffle=False)
    plain, moved = list(batches), list(to_device(batches, "cpu"))
    assert len(moved) == len(plain)
    for a, b in zip(plain, moved, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on the device machine)")
def test_to_device_on_cuda_prefetches_the_same_batches(data):
    ds, store, files = data
    batches = ClipBatches(ds, store, files, batch_size=16, shuffle=True, seed=3)
    plain = list(batches)
    moved = []
    for b in to_device(batches, "cuda"):
        torch.cuda.synchronize()
        moved.append({k: v.cpu() for k, v in b.items()})
        assert b["wave"].is_cuda and b["label"].is_cuda
        assert all(not b[k].is_cuda for k in HOST_KEYS)  # bookkeeping stays on the host
    assert len(moved) == len(plain)
    for a, b in zip(plain, moved, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a failure while reading reaches the consumer
    broken = ClipBatches(ds, store, files, batch_size=16, shuffle=False)
    broken._rows = broken._rows.copy()
    broken._rows[20] = 10**9  # out of range: the read of batch 2 fails in the reader thread
    with pytest.raises(IndexError):
        list(to_device(broken, "cuda"))
