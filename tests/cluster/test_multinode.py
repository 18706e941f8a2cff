"""Several Ray nodes for real (the local_cluster fixture, Ray's own ray.cluster_utils.Cluster: a head and two
worker nodes, each a raylet with its own processes), and the pipeline run against them as a job driver
(RAY_ADDRESS) would be:

- the head has no CPUs, like cluster.yaml's head (`CPU: 0`): the driver, the LogitAggregator and the Train
  controllers live there, every teacher and student runs on a worker node;
- each worker node has one CPU, standing in for one GPU: with `teachers.cpus_per_worker=1` each node trains
  one teacher at a time, so the teachers of the split spread over the two nodes;
- one worker node is killed while its teacher is training; Ray Train (FailureConfig) restarts that teacher
  on the remaining node from its last checkpoint, and the pipeline finishes with a complete logits table;
- the same for a student: the node of its Tune trial is killed mid-training, and Tune (students.max_failures)
  retries the trial on the remaining node from the checkpoint it last reported.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.console import said_all
from helpers.procs import pipeline_args
from helpers.wait import unit_logs, wait_for

from asc_ray.data.logits import read_logits
from asc_ray.layout import Layout, UnitRef
from asc_ray.pipeline.students import FROM_CHECKPOINT, RETRY
from asc_ray.pipeline.watch import RANK_LINE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SPLIT = 25
TEACHERS = ["bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir"]
EPOCHS = 16  # long enough that two teachers overlap on the two nodes, however fast the machine
EPOCH_DONE = re.compile(rf"\[(\w+) split{SPLIT}(?: seed\d+)?\] epoch (\d+)/\d+ ")  # asc_ray/train/trainer.py
RESUMED = re.compile(rf"\[(\w+) split{SPLIT}(?: seed\d+)?\] resumed from epoch (\d+)")


@pytest.fixture
def cluster(local_cluster):
    """A head with no CPUs and two 1-CPU worker nodes, each with a teacher slot."""
    return local_cluster([{"num_cpus": 1, "resources": {"teacher_slot": 1}} for _ in range(2)], prefix="asm")


def _unit_logs(out: Path, role: str = "teacher") -> str:
    """Every unit.log of the role, students' in their seed folders (the console shows one line per unit; the details are in these)."""
    return "\n".join(p.read_text(errors="replace") for p in unit_logs(out, role, str(SPLIT)))


def _lines(out: Path, pattern: re.Pattern, role: str = "teacher") -> list[tuple[str, ...]]:
    return pattern.findall(_unit_logs(out, role))


def _on_node(text: str) -> list[tuple[str, str]]:
    """(system, node) of each worker's rank line (asc_ray.pipeline.watch.RANK_LINE) in the text."""
    return [(m["unit"].split()[0], m["node"]) for m in RANK_LINE.finditer(text)]


def _driver(c, cmd: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    env = c.driver_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)


def test_teachers_spread_over_nodes_and_survive_losing_one(cluster, synth_dataset, tmp_path):
    c = cluster
    head_id = c.head_id
    worker_ids = {w.node_id: w for w in c.workers}
    out, log = tmp_path / "out", tmp_path / "driver.log"
    cmd = [
        sys.executable,
        *pipeline_args(synth_dataset, out),
        "--profile",
        "smoke",
        "--splits",
        str(SPLIT),
        f"teachers.systems=[{','.join(TEACHERS)}]",
        "teachers.cpus_per_worker=1",
        "teachers.max_failures=2",
        "students.systems=[baseline]",
        f"--epochs={EPOCHS}",
        f"data.cache_dir={tmp_path / 'node_cache'}",  # the nodes' copies: not the machine's /tmp/asc_ray_cache
    ]
    driver = _driver(c, cmd, tmp_path, log)

    def two_nodes_training():
        """(a teacher with a checkpoint Ray Train registered, where every teacher runs) once two teachers
        train at once on the two worker nodes (the controller collects reports every 2 s and then writes
        checkpoint_manager_snapshot.json; a checkpoint reported just before the loss may not count yet)."""
        placed: dict[str, str] = {}
        for t, n in _on_node(_unit_logs(out)):
            placed.setdefault(t, n)  # teacher -> node of its first worker
        epochs = {}
        for t, e in _lines(out, EPOCH_DONE):
            epochs[t] = max(epochs.get(t, 0), int(e))
        running = {t: n for t, n in placed.items() if epochs.get(t, 0) < EPOCHS}
        if len(set(running.values())) != 2:
            return None
        snapshot = f"split{SPLIT}-*/checkpoint_manager_snapshot.json"
        ready = [
            t
            for t in running
            if 1 <= epochs.get(t, 0) <= EPOCHS - 2
            and any((out / "ray_results").glob(f"teacher-{t}-{snapshot}"))
        ]
        return (ready[0], placed) if ready else None

    try:
        # 1. wait until two teachers train at once on the two nodes, one of them with a registered checkpoint
        victim, first_placement = wait_for(
            two_nodes_training,
            300,
            "two teachers training on two nodes",
            driver,
            lambda: log.read_text()[-4000:],
        )
        assert set(first_placement.values()) <= set(worker_ids), "a teacher ran on the head (CPU: 0)"
        lost = first_placement[victim]
        survivor = next(n for n in worker_ids if n != lost)

        # 2. lose that machine: every process of the node is killed (no graceful drain)
        c.remove(worker_ids[lost])
        before = _unit_logs(out)

        rc = driver.wait(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-6000:]

    # the lost teacher was restarted on the surviving node and resumed from its checkpoint, not from zero
    units = _unit_logs(out)
    after = [ln for ln in units.splitlines() if ln not in set(before.splitlines())]
    assert (victim, survivor) in _on_node("\n".join(after)), units[-6000:]
    assert any(t == victim and int(e) >= 1 for t, e in RESUMED.findall("\n".join(after))), units[-6000:]
    assert head_id not in {n for _, n in _on_node(units)}

    # every teacher's result records the node that finished it; all were worker nodes
    nodes = {
        t: json.loads((out / "teachers" / f"split{SPLIT}" / t / "result.json").read_text())["node_id"]
        for t in TEACHERS
    }
    assert nodes[victim] == survivor
    assert set(nodes.values()) <= set(worker_ids)

    # the logits table is complete: every teacher, every training file of the split, finite
    path = out / "logits" / f"teachers_split{SPLIT}.parquet"
    split_files = [
        ln.split("\t")[0] for ln in (synth_dataset / f"split{SPLIT}.csv").read_text().splitlines()[1:]
    ]
    table = pq.read_table(path)
    assert table.num_rows == len(split_files)
    assert set(TEACHERS) <= set(table.column_names)
    mean = read_logits(path, split_files)
    assert mean.shape == (len(split_files), 10) and np.isfinite(mean).all()

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["system"], r["split"]) for r in rows] == [("baseline", str(SPLIT))]


STUDENT, STUDENT_EPOCHS = "baseline", 10  # baseline needs no teachers: the students stage alone runs it


def test_student_trial_survives_losing_its_node(cluster, synth_dataset, tmp_path):
    c = cluster
    worker_ids = {w.node_id: w for w in c.workers}
    out, log = tmp_path / "out", tmp_path / "driver.log"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "students.py"),
        "--data-dir",
        str(synth_dataset),
        "--output-dir",
        str(out),
        "--profile",
        "smoke",
        "--splits",
        str(SPLIT),
        "teachers.systems=[]",
        f"students.systems=[{STUDENT}]",
        "students.cpus_per_trial=1",  # a node holds one trial: the retry has to go to the other node
        "students.max_failures=2",
        f"--epochs={STUDENT_EPOCHS}",
        f"data.cache_dir={tmp_path / 'node_cache'}",  # the nodes' copies: not the machine's /tmp/asc_ray_cache
    ]
    driver = _driver(c, cmd, tmp_path, log)

    def trained_epoch_2():
        """The node of the trial once it has trained epoch 2: Tune's function trainable reports synchronously
        (the trial goes on only after the driver took the report), so epoch 1's checkpoint is Tune's by then."""
        placed = _on_node(_unit_logs(out, "student"))
        done = [int(e) for t, e in _lines(out, EPOCH_DONE, "student") if t == STUDENT]
        return placed[0][1] if placed and 2 <= max(done, default=0) <= STUDENT_EPOCHS - 2 else None

    try:
        # 1. wait until the trial has trained epoch 2
        lost = wait_for(
            trained_epoch_2, 300, "the student's epoch 2", driver, lambda: log.read_text()[-4000:]
        )
        assert lost in worker_ids, "the student ran on the head (CPU: 0)"
        survivor = next(n for n in worker_ids if n != lost)

        # 2. lose that machine: every process of the node is killed (no graceful drain)
        c.remove(worker_ids[lost])
        before = set(_unit_logs(out, "student").splitlines())

        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-6000:]
    # the console says so in one line (asc_ray/pipeline/students.py TrialRetried), not with Tune's traceback:
    # the unit, why (the node's actor died), from its checkpoint
    retry = said_all(RETRY, text, logged=True)
    assert [m["unit"] for m in retry] == [UnitRef(STUDENT, SPLIT, 0).name], text[-6000:]
    assert retry[0]["cause"] in ("ActorUnavailableError", "ActorDiedError"), retry[0].group(0)
    assert retry[0]["start"] == FROM_CHECKPOINT, retry[0].group(0)
    assert not [ln for ln in text.splitlines() if ln.startswith("Traceback")], text[-6000:]

    # Tune retried the trial on the surviving node, and it resumed from its checkpoint, not from zero
    units = _unit_logs(out, "student")
    after = "\n".join(ln for ln in units.splitlines() if ln not in before)
    assert (STUDENT, survivor) in _on_node(after), units[-6000:]
    assert any(t == STUDENT and int(e) >= 1 for t, e in RESUMED.findall(after)), units[-6000:]

    # the unit's result record: finished on the survivor
    rec = json.loads(Layout(out).unit(UnitRef(STUDENT, SPLIT, 0)).record.read_text())
    assert rec["node_id"] == survivor
    assert 0.0 <= rec["test_macro_acc"] <= 1.0
