"""Half-written files are never read as complete: logits tables, checkpoints. And a logits table that does not
fit the split (files, values, class count) is refused where it is read, naming the file."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.console import said

from asc_ray.data.logits import read_logits, write_logits_table
from asc_ray.errors import AGAIN, AscRayError
from asc_ray.io import FULL, NEEDS

FILES = [f"audio/airport-x-{i}-0-0-a.wav" for i in range(6)]


def _table(path, per_model=None, files=FILES):
    rng = np.random.default_rng(0)
    per_model = per_model or {
        "t1": rng.normal(size=(len(files), 10)),
        "t2": rng.normal(size=(len(files), 10)),
    }
    return write_logits_table(path, files, ["airport"] * len(files), ["a"] * len(files), per_model)


def _raw(path, rows):
    """A Parquet file written by hand (what another tool or a bug could leave): filename + logits lists."""
    pq.write_table(
        pa.table(
            {
                "filename": [f for f, _ in rows],
                "logits": pa.array([list(map(float, v)) for _, v in rows], pa.list_(pa.float32())),
            }
        ),
        path,
    )
    return path


def _err(fn, *names):
    with pytest.raises(AscRayError) as e:
        fn()
    text = str(e.value)
    for n in names:
        assert str(n) in text, text
    assert "fix: " in text
    return text


def test_round_trip_joins_by_filename_not_row(tmp_path):
    p = _table(tmp_path / "teachers_split25.parquet")
    mean = read_logits(p, FILES)
    rev = read_logits(p, FILES[::-1])
    np.testing.assert_array_equal(rev, mean[::-1])
    np.testing.assert_allclose(
        mean, (read_logits(p, FILES, "t1") + read_logits(p, FILES, "t2")) / 2, rtol=1e-6
    )


def test_leftover_temp_file_is_ignored(tmp_path):
    p = tmp_path / "teachers_split25.parquet"
    tmp = tmp_path / ".teachers_split25.parquet.tmp-4242"  # a writer killed before its rename
    tmp.write_bytes(b"PAR1 half a table")
    _err(lambda: read_logits(p, FILES), p, "not found")  # the table is still missing, not half there
    _table(p)
    assert read_logits(p, FILES).shape == (6, 10)


def test_a_failed_write_keeps_the_previous_table(tmp_path, monkeypatch):
    p = _table(tmp_path / "teachers_split25.parquet")
    before = p.read_bytes()

    def dies_half_way(table, where, **kw):  # disk full / killed while writing
        where.write(b"PAR1" + b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    text = _err(
        lambda: _table(p, {"t1": np.ones((6, 10))}), p, "no space left", NEEDS.format(size="104 bytes")
    )
    assert said(FULL, text)["free"] and AGAIN in text
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # and no half-written temp file left
    np.testing.assert_array_equal(read_logits(p, FILES).shape, (6, 10))


def test_truncated_table_gives_a_clear_error(tmp_path):
    p = _table(tmp_path / "teachers_split25.parquet")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _err(lambda: read_logits(p, FILES), p, "unreadable")


def test_table_not_covering_the_split(tmp_path):
    p = _table(tmp_path / "t.parquet", files=FILES[:-1])
    _err(lambda: read_logits(p, FILES), p, "1 files missing", FILES[-1])
    p = _table(tmp_path / "u.parquet", files=[*FILES, "audio/extra.wav"])
    _err(lambda: read_logits(p, FILES), p, "1 unexpected", "audio/extra.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits(tmp_path, bad):
    rows = [(f, np.zeros(10)) for f in FILES]
    rows[3] = (FILES[3], np.r_[np.zeros(9), bad])
    p = _raw(tmp_path / "t.parquet", rows)
    _err(lambda: read_logits(p, FILES), p, "NaN or inf", FILES[3])


def test_wrong_class_count(tmp_path):
    p = _raw(tmp_path / "t.parquet", [(f, np.zeros(9)) for f in FILES])
    _err(lambda: read_logits(p, FILES), p, "[9] classes", "expected 10")


def test_duplicate_filename(tmp_path):
    p = _raw(tmp_path / "t.parquet", [(f, np.zeros(10)) for f in [*FILES, FILES[0]]])
    _err(lambda: read_logits(p, FILES), p, "twice")


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def trainer(make_trainer):
    """A fresh baseline Trainer whose unit folder is `out` (its log lines in .logs)."""
    return lambda out, **kw: make_trainer(split=25, out=out, overrides=["bcbl.epochs=1"], **kw)


def test_checkpoint_replaced_atomically_and_temp_leftovers_ignored(trainer, tmp_path):
    t = trainer(tmp_path)
    t.epoch = 1
    final = t.save_checkpoint()
    assert sorted(p.name for p in final.iterdir()) == ["best.pt", "checkpoint.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temp or old folder left behind
    # a run killed while writing leaves a temp folder: it is never read, the last complete checkpoint is
    (tmp_path / ".checkpoint.tmp-999").mkdir()
    (tmp_path / ".checkpoint.tmp-999" / "checkpoint.pt").write_bytes(b"half")
    t2 = trainer(tmp_path)
    t2.load_checkpoint(final)
    assert t2.epoch == 1


def _two_epochs(trainer, out):
    """Checkpoints of epoch 1 (-> checkpoint.prev/) and epoch 2 (-> checkpoint/), as fit() writes them."""
    t = trainer(out)
    for _ in range(2):
        t.epoch += 1
        t.save_checkpoint()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "checkpoint.prev"]
    return out / "checkpoint" / "checkpoint.pt"


@pytest.mark.parametrize(
    "tear", [lambda b: b[:2000], lambda b: b[: len(b) // 2], lambda b: b"\0" * 512, lambda b: b""]
)
def test_torn_checkpoint_falls_back_to_the_previous_good_one(trainer, tmp_path, tear):
    ck = _two_epochs(trainer, tmp_path)
    ck.write_bytes(tear(ck.read_bytes()))
    t = trainer(tmp_path)
    assert t.load_checkpoint(tmp_path / "checkpoint") is True  # no pickle traceback
    assert t.epoch == 1
    # the log names the torn file, then the one it resumed from instead
    skipped = [m for m in t.logs if str(ck) in m]
    assert len(skipped) == 1 and "unreadable" in skipped[0], t.logs
    assert any(str(tmp_path / "checkpoint.prev" / "checkpoint.pt") in m for m in t.logs), t.logs


def test_torn_checkpoint_without_a_previous_one_starts_clean(trainer, tmp_path):
    t = trainer(tmp_path)
    t.epoch = 1
    ck = t.save_checkpoint() / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:2000])
    t2 = trainer(tmp_path)
    assert t2.load_checkpoint(tmp_path / "checkpoint") is False
    assert t2.epoch == 0 and any(str(ck) in m for m in t2.logs)


def test_ray_checkpoint_torn_falls_back_to_this_units_own_copy_only(trainer, tmp_path):
    """Ray Train hands over its own copy of the checkpoint folder. When that copy is torn, the unit's local
    checkpoint is used - but only when it carries the same unit key (not another config's leftovers)."""
    out, ray_copy = tmp_path / "unit", tmp_path / "ray_checkpoint_000001"
    t = trainer(out, unit_key="k1")
    t.epoch = 3
    t.save_checkpoint()
    ray_copy.mkdir()
    (ray_copy / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    t2 = trainer(out, unit_key="k1")
    assert t2.load_checkpoint(ray_copy) is True and t2.epoch == 3
    t3 = trainer(out, unit_key="k2")  # another config's run of the same system and split
    assert t3.load_checkpoint(ray_copy) is False and t3.epoch == 0


def test_the_units_own_newer_checkpoint_wins_over_ray_s_older_copy(trainer, tmp_path):
    """The worker died between writing epoch 2's checkpoint and Ray registering it: Ray hands over epoch 1 (or
    nothing yet). The unit resumes from its own epoch 2 - redoing it would report epoch 2 twice (to MLflow) -
    but only from a checkpoint of its own key."""
    out, ray_copy = tmp_path / "unit", tmp_path / "ray_checkpoint_000000"
    t = trainer(out, unit_key="k1")
    t.epoch = 1
    shutil.copytree(t.save_checkpoint(), ray_copy)  # what Ray registered
    t.epoch = 2
    t.save_checkpoint()  # then the worker died
    t2 = trainer(out, unit_key="k1")
    assert t2.load_checkpoint(ray_copy) is True and t2.epoch == 2
    assert any("handed over is of epoch 1" in m for m in t2.logs), t2.logs
    t3 = trainer(out, unit_key="k1")
    assert t3.load_checkpoint(None) is True and t3.epoch == 2  # Ray had none registered yet
    t4 = trainer(
        out, unit_key="k2"
    )  # another config's unit in the same folder: Ray's copy, never the leftovers
    assert t4.load_checkpoint(ray_copy) is True and t4.epoch == 1
    t5 = trainer(out, unit_key="k2")
    assert t5.load_checkpoint(None) is False and t5.epoch == 0
    assert not [m for m in t5.logs if "checkpoint" in m], t5.logs  # a fresh start: nothing to say


def test_missing_checkpoint_file_is_not_a_crash(trainer, tmp_path):
    """The issue's case: a second run found a checkpoint folder without checkpoint.pt (being replaced)."""
    (tmp_path / "checkpoint").mkdir()
    t = trainer(tmp_path)
    assert t.load_checkpoint(tmp_path / "checkpoint") is False
    assert any(str(tmp_path / "checkpoint" / "checkpoint.pt") in line for line in t.logs), t.logs
