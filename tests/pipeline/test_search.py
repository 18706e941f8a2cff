"""Student search spaces: a grid per (system, split) over only the keys that system reads; ASHA; pick on val."""

import csv
import re

import pytest
from helpers.console import said_all
from helpers.procs import ROOT, cli_env, run_py

from asc_ray.layout import UnitRef
from asc_ray.pipeline.graph import DONE
from asc_ray.pipeline.students import search_grid
from asc_ray.systems import get_system


def test_grid_is_the_product_of_the_lists():
    grid = search_grid({"kd.lam": [0.9, 0.98], "kd.temperature": [1.0, 2.0, 4.0]}, num_samples=1, seed=0)
    assert len(grid) == 6 and {"kd.lam": 0.9, "kd.temperature": 4.0} in grid
    assert search_grid({}, num_samples=1, seed=0) == [{}]


def test_replicas_are_distinct_trials_never_identical_duplicates():
    grid = search_grid({"kd.lam": [0.9, 0.98]}, num_samples=3, seed=7)
    assert len(grid) == 6
    assert len({tuple(sorted(o.items())) for o in grid}) == 6  # each (value, replica) its own trial
    assert {o.get("seed", 7) for o in grid if o["kd.lam"] == 0.9} == {7, 1007, 2007}
    assert len(search_grid({}, num_samples=2, seed=0)) == 2


@pytest.mark.parametrize(
    "key, readers",
    [
        ("kd.lam", {"kd_ensemble"}),
        ("focusnet.alpha", {"tfs"}),
        ("channels.bcbl24", {"bcbl24"}),
        ("channels.bcbl32", {"kd_ensemble", "tfs", "baseline"}),
        ("augment.fms_p", {"kd_ensemble", "tfs", "bcbl24", "baseline"}),
    ],
)
def test_a_search_key_applies_only_to_the_students_it_changes(key, readers):
    assert {s for s in ("kd_ensemble", "tfs", "bcbl24", "baseline") if get_system(s).reads(key)} == readers


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_asha_search_over_base_channels_picks_on_validation(synth_dataset, tmp_path):
    from asc_ray.complexity import measure
    from asc_ray.features import input_shape
    from asc_ray.models import bcbl

    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db")
    common = [
        "--data-dir",
        str(synth_dataset),
        "--output-dir",
        str(tmp_path / "o"),
        "--splits",
        "100",
        "--profile",
        "smoke",
        "students.systems=[bcbl24]",
        "students.search.channels.bcbl24=[8,16]",
        "train.select=val",  # trials are chosen on the holdout (the smoke profile keeps the last epoch)
        "bcbl.epochs=2",  # raised by the smoke profile's train.min_steps (150 steps: 5 epochs here)
    ]
    for job in ("students", "evaluate"):
        r = run_py([str(ROOT / "jobs" / f"{job}.py"), *common], env, tmp_path, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        if job == "students":  # the console says which searched value won
            done = [
                m
                for m in said_all(DONE, r.stdout, logged=True)
                if m["unit"] == UnitRef("bcbl24", 100, 0).name
            ]
            assert len(done) == 1 and "channels.bcbl24" in done[0]["what"], r.stdout[-3000:]
    trials = list((tmp_path / "o" / "ray_results").glob("students-*/student_trial_*"))
    assert len(trials) == 2
    # the chosen trial trained every epoch min_steps asked for (an epoch clock stopped it at bcbl.epochs + 1)
    epochs = re.findall(
        r"epoch (\d+)/(\d+) ", (tmp_path / "o/students/split100/bcbl24/seed0/unit.log").read_text()
    )
    assert epochs[-1][0] == epochs[-1][1] and int(epochs[-1][1]) > 3, epochs[-3:]
    with open(tmp_path / "o" / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    allowed = {measure(bcbl(n), (1, *input_shape("mel44k"))).params: n for n in (8, 16)}
    assert row["system"] == "bcbl24" and int(row["params"]) in allowed


def test_which_systems_feed_a_logits_table_is_derived_from_who_needs_them():
    from asc_ray.systems import SYSTEMS, TEACHERS

    feeds = {n: s.feeds for n, s in SYSTEMS.items()}
    assert all(feeds[t] == "teachers" for t in TEACHERS)
    assert feeds["kd_ensemble"] == "kd_ensemble"  # tfs learns from it
    assert feeds["tfs"] is None and feeds["bcbl24"] is None and feeds["baseline"] is None
