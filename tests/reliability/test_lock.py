"""One run per output dir: a second pipeline on the same dir stops at once naming the holder; a lock left by a
dead run (this host: its pid is gone; another host: no heartbeat for STALE_S) is taken over, with a log line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
from helpers.console import said
from helpers.procs import PY, cli_env, pipeline_args, run_py
from helpers.wait import wait_for

from asc_ray.errors import AscRayError
from asc_ray.lock import LOCK_NAME, STALE_S, OutputLock
from asc_ray.pipeline.run import RAY

HOLD = (
    "import sys\nfrom asc_ray.lock import OutputLock\n"
    "with OutputLock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n"  # until killed
)


def _holder(out):
    """A real process holding the lock of `out` (until killed)."""
    p = subprocess.Popen(
        [PY, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    assert p.stdout.readline().strip() == "held"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_holder_is_refused_with_who_holds_it(tmp_path):
    logs = []
    with OutputLock(tmp_path, log=logs.append):
        with pytest.raises(AscRayError) as e:
            OutputLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in msg and e.value.path == str(
        tmp_path
    )  # who, where
    assert "--output-dir" in e.value.fix and "delete" not in msg and "--fresh" not in msg
    assert not (tmp_path / LOCK_NAME).exists() and logs == []  # released, nothing taken over
    with OutputLock(tmp_path):  # free again
        pass


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    pid = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": pid, "started": "yesterday"})
    )
    logs = []
    with OutputLock(tmp_path, log=logs.append) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid() == lock.me["pid"]
    assert len(logs) == 1 and f"pid {pid}" in logs[0] and "stale" in logs[0]


def test_reused_pid_is_not_the_holder(tmp_path):
    """Our own (live) pid with another process start time: the holder died and the pid was reused."""
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": "1", "started": "x"})
    )
    logs = []
    with OutputLock(tmp_path, log=logs.append):
        pass
    assert logs and "another process" in logs[0]


def test_other_host_lock_is_stale_only_without_heartbeat(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": "node-7", "pid": 1, "started": "earlier"}))
    with pytest.raises(AscRayError) as e:
        OutputLock(tmp_path).acquire()
    assert "pid 1 on node-7" in str(e.value)
    old = time.time() - STALE_S - 60
    os.utime(lock, (old, old))
    logs = []
    with OutputLock(tmp_path, log=logs.append):
        pass
    assert len(logs) == 1 and "node-7" in logs[0] and "stale" in logs[0]


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    lock = OutputLock(tmp_path, heartbeat_s=0.1)
    lock.acquire()
    try:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        wait_for(lambda: time.time() - lock.path.stat().st_mtime < 5, 30, "the heartbeat to touch the lock")
    finally:
        lock.release()


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
    lock = OutputLock(tmp_path)
    lock.acquire()
    other = {"host": "node-2", "pid": 5, "started": "now"}
    lock.path.write_text(json.dumps(other))
    lock.release()
    assert json.loads(lock.path.read_text()) == other


@pytest.mark.slow
def test_second_pipeline_on_a_held_output_dir_exits_at_once(synth_dataset, tmp_path):
    """Two real processes: a holder, then `jobs/full_pipeline.py` on the same output dir -> exit 2 before Ray
    starts, naming the holder's pid; after the holder is SIGKILLed, the next run takes over."""
    out = tmp_path / "out"
    holder = _holder(out)
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db")
    cmd = pipeline_args(synth_dataset, out)
    try:
        r = run_py([*cmd, "--splits", "25", "--profile", "smoke"], env, tmp_path, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        msg = r.stderr[r.stderr.index("error: ") :]
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg and str(out) in msg, msg  # who, where
        assert "--output-dir" in msg.split("fix: ", 1)[1], msg
        assert not said(RAY, r.stdout) and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).exists()  # SIGKILL left it behind
    # the next run takes the stale lock over, then stops in pre-flight, before Ray, on a store whose folder does
    # not exist (a missing data dir would stop it before the lock: nothing is created for bad input)
    nowhere = tmp_path / "no-such-folder"
    env = cli_env(f"sqlite:///{nowhere}/mlflow.db")
    r = run_py([*cmd, "--splits", "25", "--profile", "smoke"], env, tmp_path)
    assert r.returncode == 2 and str(nowhere) in r.stderr, r.stderr
    took = [ln for ln in r.stdout.splitlines() if f"pid {holder.pid}" in ln]
    assert len(took) == 1 and "stale" in took[0], r.stdout
    assert not (out / LOCK_NAME).exists()  # released by the run that took it
