"""The per-split dependency graph and its scheduler, without Ray: edges come from System.needs / feeds, a
unit starts when what it needs is done, the longest work first, a failure stops only what depends on it."""

import sys
import threading
from pathlib import Path

import pytest

from asc_ray.config import load_config
from asc_ray.errors import AscRayError
from asc_ray.layout import PretrainRef, TableRef, UnitRef
from asc_ray.pipeline.graph import ETA_AFTER, Scheduler, build_graph, eta_s, select
from asc_ray.systems import STUDENTS, TEACHERS

CFG = load_config("smoke")
ALL = [*TEACHERS, *STUDENTS]
BENCH = Path(__file__).resolve().parents[2] / "bench"


def T(name, split):
    """A system on a split: a student at the graph's one default seed (0), a teacher at none."""
    from asc_ray.systems import SYSTEMS

    return UnitRef(name, split, 0 if name not in SYSTEMS or SYSTEMS[name].role == "student" else None)


def Tab(source, split):
    """A logits table: the teachers' one per split, a student's per seed (the default seed 0)."""
    return TableRef(source, split, None if source == "teachers" else 0)


def test_edges_come_from_what_each_system_needs():
    g = build_graph(ALL, [5, 100])
    for sp in (5, 100):
        assert g[T("bcbl24", sp)] == [] and g[T("baseline", sp)] == []
        assert g[T("kd_ensemble", sp)] == [Tab("teachers", sp)]
        assert set(g[Tab("teachers", sp)]) == {T(t, sp) for t in TEACHERS}
        assert g[Tab("kd_ensemble", sp)] == [T("kd_ensemble", sp)]
        assert g[T("tfs", sp)] == [Tab("kd_ensemble", sp)]
        assert all(g[T(t, sp)] == [] for t in TEACHERS)
    assert len(g) == 2 * (len(ALL) + 2)


def test_a_new_system_needs_no_change_in_the_scheduler(monkeypatch):
    from asc_ray import systems

    new = systems.System(
        "kd_small", "student", "bcbl24", "mel44k", fms=True, dir=True, loss="kd", needs="teachers"
    )
    monkeypatch.setitem(systems.SYSTEMS, "kd_small", new)
    g = build_graph([*TEACHERS, "kd_small"], [25])
    assert g[T("kd_small", 25)] == [Tab("teachers", 25)]


def test_the_pretraining_runs_once_before_every_splits_passt_teachers_and_keys_them():
    """pretrain.corpus=synthetic: one pretraining unit, needed by every PaSST teacher of every split and by nothing
    else; its settings are in their keys (through the edge), not in any other unit's."""
    from asc_ray.pipeline.keys import Keys

    pre = PretrainRef("passt")
    g = build_graph(ALL, [5, 100], pretrain=("passt",))
    assert g[pre] == [] and str(pre) == "pretrain passt" and pre.role == "pretrain"
    for sp in (5, 100):
        assert all(g[T(t, sp)] == ([pre] if t.startswith("passt") else []) for t in TEACHERS)
    assert [u for u in g if pre in g[u]] == [
        T(t, sp) for sp in (5, 100) for t in TEACHERS if t.startswith("passt")
    ]
    assert pre in select(g, ["teachers"]) and pre not in select(g, ["students", "logits"])
    assert pre not in build_graph(
        ["bcbl32_fms"], [5], pretrain=("passt",)
    )  # no PaSST teacher: nothing to pretrain

    def keys(*over):
        cfg = load_config("smoke", None, ["pretrain.corpus=synthetic", *over])
        k = Keys(g, cfg, {5: "d5", 100: "d100"})
        return {u: k[u] for u in g}

    base, longer = keys(), keys("pretrain.epochs=3")
    changed = {u for u in g if base[u] != longer[u]}
    passt = {T(t, sp) for sp in (5, 100) for t in TEACHERS if t.startswith("passt")}
    assert {pre, *passt} <= changed and not any(u.name.startswith("bcbl32") for u in changed)
    plain = Keys(build_graph(ALL, [5, 100]), CFG, {5: "d5", 100: "d100"})
    assert (
        plain[T("passt_dir", 5)] != base[T("passt_dir", 5)]
    )  # fine-tuned is another model than from scratch


def test_stage_jobs_select_their_part_of_the_graph():
    g = build_graph(ALL, [10])
    assert select(g, ["teachers"]) == {T(t, 10) for t in TEACHERS}
    assert select(g, ["logits"]) == {Tab("teachers", 10)}
    assert select(g, ["students"]) == {T(s, 10) for s in STUDENTS} | {Tab("kd_ensemble", 10)}
    assert select(g, ["evaluate"]) == set()


class FakeRunner:
    """Finishes each launched unit at once, from another thread (as Ray's fits do), and remembers the order
    and what was done when each unit was launched; `fail` units end with an error."""

    def __init__(self, fail=()):
        self.order, self.done_before, self.fail = [], {}, set(fail)
        self.done = set()
        self.lock = threading.Lock()

    def launch(self, units, done_cb):
        for u in units:
            with self.lock:
                self.order.append(u)
                self.done_before[u] = set(self.done)

            def finish(u=u):
                with self.lock:
                    if u not in self.fail:
                        self.done.add(u)
                done_cb(
                    u, RuntimeError("boom") if u in self.fail else {"node_id": "n1", "test_macro_acc": 0.5}
                )

            threading.Thread(target=finish).start()


def _run(graph, selected, runner, done=lambda u: None, cfg=CFG, scheduler=Scheduler):
    s = scheduler(graph, selected, cfg, is_done=done, launch=runner.launch)
    s.run()
    return s


def test_each_unit_starts_once_what_it_needs_is_done_longest_first():
    g = build_graph(ALL, [5, 100])
    r = FakeRunner()
    s = _run(g, set(g), r)
    assert set(r.order) == set(g) and len(r.order) == len(g)
    for u in g:
        assert set(g[u]) <= r.done_before[u], u
    # the first launches: split 100's PaSST teachers before any split-5 work (max_concurrent caps teachers)
    first = r.order[: CFG.teachers.max_concurrent]
    assert all(u.split == 100 and u.name.startswith("passt") for u in first), first
    assert r.order.index(T("bcbl24", 100)) < r.order.index(T("bcbl24", 5))
    assert len(s.timeline) == len(g) and all(t["node"] == "n1" for _, t in s.timeline)


def test_a_failed_teacher_blocks_only_what_depends_on_it():
    g = build_graph(ALL, [5, 100])
    r = FakeRunner(fail={T("passt_dir", 5)})
    s = _run(g, set(g), r)
    assert set(s.failures) == {T("passt_dir", 5)}
    for u in (Tab("teachers", 5), T("kd_ensemble", 5), T("tfs", 5)):
        assert s.state[u] == "blocked" and u not in r.order
    assert s.state[T("tfs", 100)] == "done" and s.state[T("baseline", 5)] == "done"


def test_finished_units_are_reused_and_a_missing_input_is_one_clear_error():
    g = build_graph(ALL, [10])
    finished = {T(t, 10) for t in TEACHERS} | {Tab("teachers", 10)}
    r = FakeRunner()
    _run(g, select(g, ["students"]), r, done=lambda u: {"node_id": "old"} if u in finished else None)
    assert not finished & set(r.order) and T("kd_ensemble", 10) in r.order
    with pytest.raises(AscRayError) as e:
        _run(g, select(g, ["students"]), FakeRunner())
    assert "passt_fms split10" in str(e.value) and "jobs/teachers.py" in e.value.fix


def test_a_scheduler_subclass_decides_readiness_and_order():
    """Scheduler.ready / Scheduler.order are the hooks: the makespan bench's four-stage scheduler
    (bench/makespan_driver.py) makes every student wait for every teacher of every split, smallest split first."""
    sys.path.insert(0, str(BENCH))  # (the isolated fixture restores sys.path)
    from makespan_driver import FourStageScheduler

    g = build_graph(ALL, [5, 100])
    r = FakeRunner()
    s = _run(g, set(g), r, scheduler=FourStageScheduler)
    assert set(s.state.values()) == {"done"} and len(r.order) == len(g)
    teachers = {T(t, sp) for t in TEACHERS for sp in (5, 100)}
    assert teachers <= r.done_before[T("baseline", 5)]  # students waited for every teacher of every split
    assert teachers <= r.done_before[T("bcbl24", 100)]
    assert r.order[0].split == 5  # smallest split first, as v0.1 did
    tables = {Tab("teachers", sp) for sp in (5, 100)}
    assert tables <= r.done_before[T("baseline", 100)]  # and for every table of the stage before theirs
    plain = FakeRunner()
    _run(g, set(g), plain)
    assert T("baseline", 5) in plain.order[:12] and not teachers <= plain.done_before[T("baseline", 5)]


def test_eta_scales_the_time_so_far_by_the_work_left_over_the_work_done():
    """Each unit left is priced at its kind's measured seconds per unit of work (an unseen kind: the mean finished
    unit), whether or not it was launched: on 2 cores the README run's queued students were launched at the
    start and an ETA that took them as nearly done said 9 minutes with 36 to go."""
    done = [
        ("cnn", 1.0, 10.0),
        ("cnn", 1.0, 10.0),
        ("cnn", 1.0, 10.0),
        ("passt", 2.0, 40.0),
        ("passt", 2.0, 40.0),
    ]
    assert len(done) == ETA_AFTER
    spent = 110.0
    left = [("cnn", 3.0), ("passt", 1.0), ("table", 1.0)]  # 30 s + 20 s + the mean finished unit, 22 s
    assert eta_s(55.0, done, left) == pytest.approx(55.0 * (30 + 20 + 22) / spent)
    assert eta_s(55.0, done, []) == 0.0
    assert eta_s(55.0, done[:-1], left) is None  # too few finished to say
    # twice the time for the same work done: half the rate, twice the time left
    assert eta_s(110.0, done, left) == 2 * eta_s(55.0, done, left)
