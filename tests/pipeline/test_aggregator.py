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
EXPECTED = {"teachers": ["bcbl32_fms", "passt_dir"], "kd_ensemble": ["kd_ensemble"]}


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=1, include_dashboard=False, namespace="asc_ray_test", log_to_driver=False)
    yield
    ray.shutdown()


def test_table_is_written_once_all_teachers_are_in(ray_runtime, tmp_path):
    agg = start_aggregator(tmp_path, META, EXPECTED, "datakey")
    a, b = np.arange(50, dtype=np.float32).reshape(5, 10), np.ones((5, 10), np.float32)
    assert (
        ray.get(agg.submit.remote("teachers", 25, "bcbl32_fms", a, "k1", "run1", {"test_macro_acc": 0.5}))
        is None
    )
    assert not (tmp_path / "teachers_split25.parquet").exists()
    path = ray.get(agg.submit.remote("teachers", 25, "passt_dir", b, "k2", "run2", {"test_macro_acc": 0.6}))
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
    # the finished teachers are remembered (resume) only under their own key
    assert ray.get(agg.has.remote("teachers", 25, "bcbl32_fms", "k1"))["test_macro_acc"] == 0.5
    assert ray.get(agg.has.remote("teachers", 25, "bcbl32_fms", "other")) is None
    files, logits = ray.get(agg.table.remote("teachers", 25))
    assert files == FILES and logits.shape == (5, 10)


def test_a_table_for_other_files_or_bad_values_is_refused(ray_runtime, tmp_path):
    agg = start_aggregator(tmp_path, META, EXPECTED, "datakey")
    with pytest.raises(ray.exceptions.RayTaskError, match="expected \\(5, 10\\)"):
        ray.get(agg.submit.remote("teachers", 25, "bcbl32_fms", np.zeros((4, 10)), "k", "", {}))
    bad = np.zeros((5, 10), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ray.exceptions.RayTaskError, match="finite"):
        ray.get(agg.submit.remote("teachers", 25, "bcbl32_fms", bad, "k", "", {}))
    path = ray.get(agg.submit.remote("kd_ensemble", 25, "kd_ensemble", np.zeros((5, 10)), "k", "", {}))
    with pytest.raises(AscRayError, match="does not match the split"):
        read_logits(path, FILES + ["audio/park-lyon-9-0-0-a.wav"])
