"""A full disk (ENOSPC) stops the unit with one AscRayError naming the file, the space it needed and what is
free; the last good checkpoint stays, no temp file is left, and the same unit resumes once space is freed.
Checked with an injected ENOSPC at the write, and on a real size-limited tmpfs where this test may mount one
(root on Linux; skipped elsewhere)."""

from __future__ import annotations

import errno
import subprocess

import pytest
import torch
from helpers.console import said

from asc_ray.errors import AGAIN, AscRayError
from asc_ray.io import FULL, NEEDS
from asc_ray.train import finish_unit


@pytest.fixture
def trainer(make_trainer):
    """A fresh baseline Trainer (2 epochs on split 25) whose unit folder is `out`."""
    return lambda out: make_trainer(split=25, out=out)


def _assert_full_disk_error(e: AscRayError, out):
    """The file, the space it needed and what is free, and the fix: nothing lost, run it again."""
    text = str(e)
    m = said(FULL, e.problem)
    assert m and said(NEEDS, m["need"]) and m["free"], text
    assert str(out) in e.path and e.path.endswith(".pt"), e.path
    assert AGAIN in e.fix and "delete" not in e.fix


class _Stop(Exception):
    pass


def _stop_after(m, epoch):
    if m["epoch"] >= epoch:
        raise _Stop


def test_full_disk_during_fit(trainer, tmp_path, monkeypatch):
    """Epoch 1's checkpoint is written; epoch 2's hits ENOSPC: an AscRayError (no OSError traceback), the
    epoch-1 checkpoint intact, no temp folder; after 'freeing space' a new Trainer resumes at epoch 1 and
    finishes."""
    real_save = torch.save
    t = trainer(tmp_path)
    with pytest.raises(_Stop):
        t.fit(lambda m, ckpt: _stop_after(m, 1))

    def full(obj, f, *a, **kw):
        if hasattr(f, "write") and str(tmp_path) in getattr(f, "name", ""):
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(AscRayError) as e:
        t.fit()
    _assert_full_disk_error(e.value, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temp, no .prev yet
    monkeypatch.setattr(torch, "save", real_save)  # space freed

    t2 = trainer(tmp_path)
    assert t2.load_checkpoint(tmp_path / "checkpoint") and t2.epoch == 1
    fitted = t2.fit()
    assert t2.epoch == 2 and len(t2.history) == 2 and fitted.weights.is_file()
    result = finish_unit(t2.system, t2.cfg, 25, t2.data, tmp_path, fitted, log=lambda m: None)
    assert (tmp_path / "model.pt").is_file() and result["selected_epoch"] == 2


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root on Linux): {r.stderr.decode().strip()[:200]}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_file_system(trainer, small_fs):
    """A 4 MB tmpfs, filled up but for 50 kB: saving a checkpoint fails with the message, the previous
    checkpoint stays readable; after the filler is removed the same save succeeds."""
    from asc_ray.io import atomic_write_text

    t = trainer(small_fs / "unit")
    t.epoch = 1
    size = sum(p.stat().st_size for p in t.save_checkpoint().iterdir())
    assert size > 100_000, size  # the test means something only when a checkpoint exceeds the free space
    import shutil

    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(small_fs).free - 50_000))
    t.epoch = 2
    with pytest.raises(AscRayError) as e:
        t.save_checkpoint()
    _assert_full_disk_error(e.value, small_fs)
    with pytest.raises(AscRayError) as e:
        atomic_write_text(small_fs / "unit" / "result.json", "x" * 200_000)
    assert e.value.path == str(small_fs / "unit" / "result.json") and "needs at least" in str(e.value)
    assert not [p for p in (small_fs / "unit").iterdir() if p.name.startswith(".")]  # temps removed
    t2 = trainer(small_fs / "unit")
    assert t2.load_checkpoint(small_fs / "unit" / "checkpoint") and t2.epoch == 1
    filler.unlink()
    t.save_checkpoint()
    t3 = trainer(small_fs / "unit")
    assert t3.load_checkpoint(small_fs / "unit" / "checkpoint") and t3.epoch == 2
