"""bench/kd_effect.py's students beside the pipeline's: the positive control (a split's student distilled from a
larger split's teachers) and the student that hears the teachers' clean view, trained in-process on the pipeline's
seeds. The pipeline run it starts is the pipeline's own (tested in tests/pipeline)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
from helpers.procs import ROOT
from helpers.training import TINY

from asc_ray.config import load_config
from asc_ray.data.logits import write_logits_table
from asc_ray.data.tau import SCENES, TauDataset
from asc_ray.systems import get_system
from asc_ray.train import train_seed

sys.path.insert(0, str(ROOT / "bench"))
import kd_effect  # noqa: E402


@pytest.fixture
def teachers_of_100(synth_dataset, tmp_path):
    """A teachers' table of split 100 in the pipeline's place: one row per split-100 file."""
    ds = TauDataset.open(synth_dataset)
    files = ds.split_files(100)
    rng = np.random.default_rng(0)
    write_logits_table(
        tmp_path / "logits" / "teachers_split100.parquet",
        files,
        [SCENES[i] for i in ds.labels(files)],
        ds.devices(files),
        {"bcbl32_fms": rng.normal(size=(len(files), len(SCENES))).astype(np.float32)},
    )
    return tmp_path


@pytest.mark.parametrize("clean", [False, True], ids=["positive-control", "clean-views"])
def test_a_student_beside_the_pipelines_trains_on_its_split_with_the_larger_splits_targets(
    synth_dataset, teachers_of_100, clean
):
    args = argparse.Namespace(profile="smoke", seeds="0,1", overrides=TINY)
    rec = kd_effect.extra_student(synth_dataset, teachers_of_100, 25, 1, args, 100, clean)
    cfg = load_config("smoke", None, TINY)
    # the seed's initial weights and batches: those of the pipeline's no_kd at split 25, seed 1 (paired)
    assert rec["seed"] == 1 and rec["split"] == 25
    assert rec["train_seed"] == train_seed(get_system("no_kd"), cfg, 25, 1)
    assert rec["augment"] == ("none" if clean else "fms+dir")
    again = kd_effect.extra_student(synth_dataset, teachers_of_100, 25, 1, args, 100, clean)
    assert again["finished"] == rec["finished"]  # read back from its record: nothing trains twice
