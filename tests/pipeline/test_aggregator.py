"""The LogitAggregator actor on a real (small) Ray runtime: tables appear only when complete, keyed by filename."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from asc_ray.errors import AscRayError
from asc_ray.logits import read_logits, table_metadata
from asc_ray.pipeline.aggregator import start_aggregator

FILES = [f"audio/park-lyon-{i}-0-0-a.wav" for i in range(5)]
META = {25: (FILES, ["park"] * 5, ["a"] * 5)}
KEYS = {25: "datakey"}


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=1, include_dashboard=False, namespace="asc_ray_test", log_to_driver=False)
    yield
    ray.shutdown()


def _npy(tmp_path, name, arr):
    p = tmp_path / f"{name}.npy"
    np.save(p, arr)
    return str(p)


def test_table_is_written_once_all_teachers_are_in(ray_runtime, tmp_path):
    agg = start_aggregator(tmp_path / "logits", META, KEYS)
    a, b = np.arange(50, dtype=np.float32).reshape(5, 10), np.ones((5, 10), np.float32)
    keys = {"bcbl32_fms": "k1", "passt_dir": "k2"}
    ray.get(agg.collect.remote("teachers", 25, "bcbl32_fms", _npy(tmp_path, "a", a), "k1", "run1"))
    assert ray.get(agg.write_table.remote("teachers", 25, keys)) is None  # passt_dir is not in yet
    assert not (tmp_path / "logits" / "teachers_split25.parquet").exists()
    ray.get(agg.collect.remote("teachers", 25, "passt_dir", _npy(tmp_path, "b", b), "k2", "run2"))
    path = ray.get(agg.write_table.remote("teachers", 25, keys))
    table = pq.read_table(path)
    assert table.column_names == ["filename", "scene_label", "device", "bcbl32_fms", "passt_dir", "logits"]
    for col in ("bcbl32_fms", "passt_dir", "logits"):
        t = table.schema.field(col).type
        assert pa.types.is_list(t) and t.value_type == pa.float32()
    np.testing.assert_allclose(read_logits(path, FILES), (a + b) / 2)
    np.testing.assert_allclose(read_logits(path, FILES, column="passt_dir"), b)
    # keyed by filename: any order of the requested files comes back aligned
    np.testing.assert_allclose(read_logits(path, FILES[::-1]), ((a + b) / 2)[::-1])
    meta = table_metadata(path)
    assert meta["runs"] == {"bcbl32_fms": "run1", "passt_dir": "run2"} and meta["data_key"] == "datakey"
    # the collected logits are remembered under their own unit key only
    assert ray.get(agg.part_key.remote("teachers", 25, "bcbl32_fms")) == "k1"
    assert ray.get(agg.write_table.remote("teachers", 25, {**keys, "passt_dir": "other"})) is None
    files, logits = ray.get(agg.table.remote("teachers", 25))
    assert files == FILES and logits.shape == (5, 10)
    # the same keys again: the table is confirmed, not rewritten
    mtime = (tmp_path / "logits" / "teachers_split25.parquet").stat().st_mtime_ns
    assert ray.get(agg.write_table.remote("teachers", 25, keys)) == path
    assert (tmp_path / "logits" / "teachers_split25.parquet").stat().st_mtime_ns == mtime


def test_a_table_for_other_files_or_bad_values_is_refused(ray_runtime, tmp_path):
    agg = start_aggregator(tmp_path / "logits", META, KEYS)
    with pytest.raises(ray.exceptions.RayTaskError, match="expected \\(5, 10\\)"):
        ray.get(
            agg.collect.remote("teachers", 25, "bcbl32_fms", _npy(tmp_path, "x", np.zeros((4, 10))), "k", "")
        )
    bad = np.zeros((5, 10), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ray.exceptions.RayTaskError, match="finite"):
        ray.get(agg.collect.remote("teachers", 25, "bcbl32_fms", _npy(tmp_path, "y", bad), "k", ""))
    ray.get(
        agg.collect.remote("kd_ensemble", 25, "kd_ensemble", _npy(tmp_path, "z", np.zeros((5, 10))), "k", "")
    )
    path = ray.get(agg.write_table.remote("kd_ensemble", 25, {"kd_ensemble": "k"}))
    # a table that no longer matches the split's files is refused when a student asks for it
    with pytest.raises(AscRayError, match="does not match the split"):
        read_logits(path, FILES[:4])
