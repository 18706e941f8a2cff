"""The graph's critical path and the idle GPUs its units get (teachers/students.critical_path_workers): which
units lie on the longest path, how a launch batch shares what is idle, and (slow) a pipeline on a local Ray
where the critical-path teacher and student train data parallel and say why."""

from __future__ import annotations

import json

import pytest
from helpers.console import said, said_all
from helpers.procs import cli_env, pipeline_args, run_py

from asc_ray.config import load_config
from asc_ray.layout import Layout, TableRef, UnitRef
from asc_ray.pipeline.graph import CRITICAL_PATH, build_graph, critical_path, share_idle, work
from asc_ray.pipeline.run import WORKERS
from asc_ray.systems import STUDENTS, TEACHERS

FULL = load_config("full")


def test_the_full_profiles_critical_path_is_split_100s_cnn_teachers_then_kd_ensemble_then_tfs():
    g = build_graph([*TEACHERS, *STUDENTS], [5, 10, 25, 50, 100], FULL.students.seeds)
    crit = critical_path(g, g, lambda u: work(u, FULL))
    seeds = FULL.students.seeds
    # the 32-BCBL teachers (150 epochs) outlast PaSST (25 epochs at 2.9x a CNN's cost per clip): all three tie
    want = {UnitRef(t, 100) for t in ("bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir")}
    want |= {TableRef("teachers", 100)}
    want |= {r(n, 100, s) for s in seeds for r, n in ((UnitRef, "kd_ensemble"), (TableRef, "kd_ensemble"))}
    want |= {UnitRef("tfs", 100, s) for s in seeds}
    assert crit == want


def test_the_critical_path_of_what_is_left_to_run():
    """Teachers reused: the path is what remains (the students' stage alone)."""
    g = build_graph([*TEACHERS, *STUDENTS], [50, 100], [0])
    todo = [u for u in g if u.role != "teacher" and u != TableRef("teachers", 100)]
    crit = critical_path(g, todo, lambda u: work(u, FULL))
    assert crit == {
        UnitRef("kd_ensemble", 100, 0),
        TableRef("kd_ensemble", 100, 0),
        UnitRef("tfs", 100, 0),
    }
    assert critical_path(g, [], lambda u: work(u, FULL)) == set()


def _units(*names):
    return [UnitRef(n, 100, 0) for n in names]


def test_idle_gpus_go_to_critical_units_after_the_rest_of_the_batch():
    kd, tfs, base = _units("kd_ensemble", "tfs", "baseline")

    def demand(u, n):
        return (
            0.25 if n == 1 else float(n)
        )  # a Tune trial on a quarter GPU, a data-parallel worker on a whole one

    # 8 idle GPUs, one critical student launched with a baseline: 7.75 left, at most 4
    assert share_idle([kd, base], {kd}, 8.0, demand, lambda u: 4) == {kd: 4, base: 1}
    # three critical units share evenly what is left
    seeds = [UnitRef("kd_ensemble", 100, s) for s in (0, 1, 2)]
    assert share_idle(seeds, set(seeds), 8.0, demand, lambda u: 8) == dict(zip(seeds, [2, 3, 3], strict=True))
    # nothing idle, or a cap of 1 (off): one worker each
    assert share_idle([kd, tfs], {kd}, 0.5, demand, lambda u: 4) == {kd: 1, tfs: 1}
    assert share_idle([kd], {kd}, 8.0, demand, lambda u: 1) == {kd: 1}
    # a unit off the critical path never grows
    assert share_idle([base], {kd}, 8.0, demand, lambda u: 4) == {base: 1}


def test_the_timeline_label_says_why_a_unit_had_several_workers(tmp_path, monkeypatch):
    from asc_ray import export

    labels = []
    monkeypatch.setattr(export.plt.Axes, "text", lambda self, x, y, s, **k: labels.append(s))
    e = {"role": "student", "node": "n1", "start": 0.0, "end": 5.0}
    entries = [
        {
            **e,
            "label": "kd_ensemble split100 seed0",
            "workers": 4,
            "workers_why": "critical path: 7 GPUs idle",
        },
        {**e, "label": "baseline split100 seed0", "workers": 1, "workers_why": ""},
    ]
    export.plot_timeline(entries, tmp_path / "t.png")
    assert " kd_ensemble split100 seed0 x4 (critical path: 7 GPUs idle)" in labels
    assert " baseline split100 seed0" in labels


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_critical_path_units_train_data_parallel_on_idle_cpus(synth_dataset, tmp_path):
    """A one-split pipeline on a local Ray of 2 CPUs: the teacher and the kd_ensemble student on the critical
    path each get 2 workers (of 0.5 CPU each: the rest idles), a DDP run over gloo, each rank on half the
    recipe's batch and its own shard; the record, the timeline and the console say so. The baseline student,
    off the path, stays a Tune trial on one worker."""
    split = 50
    probe = tmp_path / "probe"
    probe.mkdir()
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db", probe=True, ASC_RAY_PROBE_DIR=str(probe))
    out = tmp_path / "out"
    overrides = [
        "teachers.systems=[bcbl32_fms]",
        "students.systems=[kd_ensemble,baseline]",
        "teachers.critical_path_workers=2",
        "students.critical_path_workers=2",
        "train.epochs=2",
    ]
    cmd = pipeline_args(synth_dataset, out)
    r = run_py([*cmd, "--splits", str(split), "--profile", "smoke", *overrides], env, tmp_path, timeout=1100)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    path = said(CRITICAL_PATH, r.stdout, logged=True)
    chain = path["chain"].split(", ") if path else []
    assert chain[:3] == ["bcbl32_fms split50", "teachers logits split50", "kd_ensemble split50 seed0"], chain
    batch = load_config("smoke").bcbl.batch_size
    for name, role in (("bcbl32_fms", "teacher"), ("kd_ensemble", "student")):
        ranks = [json.loads((probe / f"{name}_split{split}_rank{i}.json").read_text()) for i in (0, 1)]
        assert [x["world_size"] for x in ranks] == [2, 2], name
        assert [x["batch_size"] for x in ranks] == [batch // 2] * 2, name  # the recipe's batch, split
        assert not set(ranks[0]["files"]) & set(ranks[1]["files"]), name
        assert ranks[0]["parameters"] == ranks[1]["parameters"], name  # DDP: one model
        rec = json.loads(
            Layout(out).unit(UnitRef(name, split, 0 if role == "student" else None)).record.read_text()
        )
        assert rec["workers"] == 2 and rec["workers_why"].startswith("critical path: "), rec
    base = json.loads(Layout(out).unit(UnitRef("baseline", split, 0)).record.read_text())
    assert base["workers"] == 1 and base["workers_why"] == ""
    timeline = {e["label"]: e for e in json.loads((out / "timeline.json").read_text())}
    assert timeline[f"kd_ensemble split{split} seed0"]["workers"] == 2
    assert timeline[f"baseline split{split} seed0"]["workers"] == 1
    grown = {m["unit"]: m["workers"] for m in said_all(WORKERS, r.stdout, logged=True)}
    assert grown == {f"kd_ensemble split{split} seed0": "2", f"bcbl32_fms split{split}": "2"}, r.stdout[
        -3000:
    ]
