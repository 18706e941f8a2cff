"""Data-parallel teachers for real (slow): `teachers.num_workers=2` through `python jobs/teachers.py` - a local
Ray runtime, one TorchTrainer per teacher with two workers, DistributedDataParallel over gloo on CPU. PaSST (its
distilled head is unused by its forward: DDP needs every trainable parameter to get a gradient) and a CNN
teacher. What docs/cluster.md promises: each rank trains on its own disjoint shard of the training files, the
weights stay identical across ranks, validation and test run on rank 0, which alone writes the outputs.

What each rank trained on is seen from outside the package: the run and its Ray workers have the test probe
(tests/helpers/probe/sitecustomize.py) on their PYTHONPATH, which records each rank's training files and a
digest of its parameters into ASC_RAY_PROBE_DIR."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.procs import ROOT, TINY_PRETRAIN, cli_env, run_py

TEACHERS = ("passt_dir", "bcbl32_fms")
# split 50: the smallest split of the tiny set with a validation holdout (rank 0 validates; splits 5-25 have none)
SPLIT = 50

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_two_workers_per_teacher_train_disjoint_shards_in_step(synth_dataset, tmp_path):
    from asc_ray.config import load_config
    from asc_ray.data.holdout import split_holdout
    from asc_ray.data.tau import TauDataset
    from asc_ray.layout import Layout, UnitRef

    shards = tmp_path / "shards"
    shards.mkdir()
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db", probe=True, ASC_RAY_PROBE_DIR=str(shards))
    overrides = [
        "teachers.num_workers=2",
        f"teachers.systems=[{','.join(TEACHERS)}]",
        "passt.size=small",
        "train.epochs=2",
        "train.select=val",  # rank 0 validates on the holdout (the smoke profile keeps the last epoch)
        *TINY_PRETRAIN,
    ]
    out = tmp_path / "out"
    cmd = [str(ROOT / "jobs" / "teachers.py"), "--data-dir", str(synth_dataset)]
    cmd += ["--output-dir", str(out), "--splits", str(SPLIT), "--profile", "smoke", *overrides]
    r = run_py(cmd, env, tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]

    cfg = load_config("smoke", None, overrides)
    ds = TauDataset.open(synth_dataset)
    train, val = split_holdout(ds, ds.split_files(SPLIT), cfg.data.holdout_fraction, cfg.seed)
    for name in TEACHERS:
        ranks = [json.loads((shards / f"{name}_split{SPLIT}_rank{i}.json").read_text()) for i in (0, 1)]
        assert [x["world_size"] for x in ranks] == [2, 2]
        seen = [set(x["files"]) for x in ranks]
        assert seen[0] and seen[1] and not seen[0] & seen[1], name  # disjoint shards, both non-empty
        assert seen[0] | seen[1] <= set(train), name  # training files only: never validation or test
        # the shards are the rank-strided halves of the training files (asc_ray.train.shard)
        half = len(train) // 2
        assert seen[0] <= set(train[0 : 2 * half : 2]) and seen[1] <= set(train[1 : 2 * half : 2]), name
        # DDP: one model, in step on both ranks (BatchNorm running statistics are each rank's own; rank 0's
        # are the ones saved)
        assert ranks[0]["parameters"] == ranks[1]["parameters"], name
        # validation on rank 0 only (it selects and saves); rank 1 never evaluates
        assert all(np.isfinite(h["val_macro_acc"]) for h in ranks[0]["history"]), name
        assert all(np.isnan(h["val_macro_acc"]) for h in ranks[1]["history"]), name
        assert [h["epoch"] for h in ranks[0]["history"]] == [1, 2]
        unit = Layout(out).unit(UnitRef(name, SPLIT))
        unit_log = unit.log.read_text()
        # one start per rank and no restart: without the fix PaSST's DDP raised at its second step ("Expected
        # to have finished reduction in the prior iteration") and Ray Train's restart hid it
        assert unit_log.count("rank 0 on node") == 1 and unit_log.count("rank 1 on node") == 1, unit_log
        assert "resumed from epoch" not in unit_log, unit_log
        assert "epoch 2/2" in unit_log and unit_log.count(" epoch 2/2 ") == 1  # progress from rank 0 only
        result = json.loads(unit.record.read_text())
        assert np.isfinite(result["test_macro_acc"]) and result["selected_epoch"] in (1, 2)
        logits = np.load(result["files"]["split_logits"])  # rank 0's logits over all the split's files
        assert logits.shape == (len(ds.split_files(SPLIT)), 10) and np.isfinite(logits).all()
