"""MLflow runs that survive kills and restarts (fast: a SQLite store, and a port nothing listens on): a unit's one
run is found again whatever moment its process died at, each epoch is one entry of its history however often it
is logged, a claimed spool file of a dead process is sent, a dead driver's parent run is found. The same with a
real server that restarts: tests/reliability/test_mlflow_outage.py; all of it at once: tests/reliability/test_chaos.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers.procs import free_port
from mlflow.tracking import MlflowClient

from asc_ray import tracking
from asc_ray.pipeline.unit import RUN_FILE, log_epochs, open_run
from asc_ray.spool import CLAIMED
from asc_ray.tracking import SPOOL_DIR, Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('runs')}/mlflow.db"
    Tracker(uri, "runs").experiment_id()  # creates the tables once (seconds)
    return uri


def _history(uri, run_id, key="train_loss"):
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _epochs(n):
    return [
        {"train_loss": 1.0 / e, "epoch_s": 2.0 + e, "epoch": e, "progress": e / n, "end_time": 1e9 + e}
        for e in range(1, n + 1)
    ]


def test_an_epoch_logged_again_at_its_own_time_is_one_entry(store):
    """A unit resumed from epoch 2 logs epochs 1-2 again (what its checkpoint holds), then 3 (twice: a spool
    replayed by two processes): MLflow keeps each once, because each carries the time it ended."""
    t = Tracker(store, "runs")
    rid = t.start_run("unit")
    history = _epochs(3)
    log_epochs(t, rid, history[:2])
    log_epochs(t, rid, history[:2])  # the resumed worker
    log_epochs(t, rid, [history[2]])
    log_epochs(t, rid, [history[2]])
    assert _history(store, rid) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert len(MlflowClient(store).get_metric_history(rid, "epoch_s")) == 3
    assert "end_time" not in MlflowClient(store).get_run(rid).data.metrics  # a clock, not a figure


def test_a_unit_finds_its_run_again_whenever_it_died(store, tmp_path):
    t = Tracker(store, "runs")
    tags = {"role": "teacher", "system": "baseline", "split": 25}
    first = open_run(t, tmp_path, "k1", "baseline split25", tags, None)
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == first
    assert open_run(t, tmp_path, "k1", "baseline split25", tags, None) == first  # resumed
    # killed after making the run, before keeping its id: the token in the folder finds it
    known = json.loads((tmp_path / RUN_FILE).read_text())
    (tmp_path / RUN_FILE).write_text(json.dumps({**known, "run_id": None}))
    assert open_run(t, tmp_path, "k1", "baseline split25", tags, None) == first
    runs = MlflowClient(store).search_runs([t.experiment_id()], f"tags.run_token = '{known['token']}'")
    assert [r.info.run_id for r in runs] == [first]
    # another key (the config changed) is another model: a run of its own
    assert open_run(t, tmp_path, "k2", "baseline split25", tags, None) not in (None, first)


def test_an_unreachable_server_neither_makes_a_second_run_nor_stalls(tmp_path, monkeypatch):
    """Resuming while the server is down keeps the run it has; a new run waits START_WAIT_S for the server,
    then the unit goes on without one (and later calls do not wait again)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(tracking, "START_WAIT_S", 0.0)
    t = Tracker(f"http://127.0.0.1:{free_port()}", "runs")
    t.set_spool(tmp_path / SPOOL_DIR)
    assert t.start_run("unit", run_id="0123abcd") == "0123abcd"
    with pytest.warns(UserWarning, match="no run for unit"):
        assert t.start_run("unit", token="tok") is None
    monkeypatch.setattr(tracking, "START_WAIT_S", 600.0)
    start = time.monotonic()
    with pytest.warns(UserWarning, match="no run for another unit"):
        assert t.start_run("another unit") is None  # down moments ago: no second wait
    assert time.monotonic() - start < 60


def test_a_dead_drivers_parent_run_is_found_by_output_dir_and_host(store):
    t = Tracker(store, "runs")
    where = {"role": "pipeline", "output_dir": "/data/out", "host": socket.gethostname()}
    dead = t.start_run("pipeline 1", where)
    done = t.start_run("pipeline 2", where)
    t.finish(done)
    other = t.start_run("pipeline 3", {**where, "output_dir": "/data/other"})
    assert t.stale_runs(where) == [dead]
    assert other not in t.stale_runs(where)


def test_a_spool_file_claimed_by_a_process_that_died_is_sent_by_the_next_replay(store, tmp_path):
    """A worker killed while it replayed its spool leaves the claimed file behind; the driver's replay at the
    end of the run sends it (again: each record is one MLflow takes twice as once). A file claimed by a live
    process is left to it."""
    t = Tracker(store, "runs")
    rid = t.start_run("unit")
    spool = tmp_path / SPOOL_DIR
    spool.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    rec = {"op": "log_batch", "run_id": rid, "metrics": [["train_loss", 0.5, 1_000_000_000_000, 1]]}
    for pid in (int(dead.stdout), os.getpid()):
        (spool / f"spool-{host}-{pid}.jsonl{CLAIMED}{host}-{pid}").write_text(json.dumps(rec) + "\n")
    t.set_spool(spool)
    assert t.replay_spool() == (1, 0)
    assert _history(store, rid) == [(1, 0.5)]
    assert [p.name.endswith(f"-{os.getpid()}") for p in spool.iterdir()] == [True]
