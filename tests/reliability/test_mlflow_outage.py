"""An MLflow server outage (slow: a real `mlflow server` process, killed and restarted on the same port and
SQLite store): calls made while it is down are spooled under the output dir and replayed once it answers -
by the next call of the same process, or by `python -m asc_ray.tracking replay OUTPUT_DIR` - without
duplicates, and a second replay sends nothing."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.procs import PY, cli_env, free_port, run_py
from helpers.wait import wait_for_http

from asc_ray.tracking import SPOOL_DIR, Tracker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


class Server:
    def __init__(self, tmp):
        self.tmp, self.port = tmp, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.p = None

    def start(self):
        self.p = subprocess.Popen(
            [
                str(Path(PY).parent / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.tmp}/mlflow.db",
                "--artifacts-destination",
                str(self.tmp / "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "server.log", "a"),
            start_new_session=True,
        )
        wait_for_http(self.uri + "/health", 240, proc=self.p, details=lambda: self.log()[-3000:])

    def log(self) -> str:
        return (self.tmp / "server.log").read_text(errors="replace")

    def kill(self):
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    if s.p.poll() is None:
        s.kill()


def _history(uri, run_id, key):
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_outage_is_spooled_and_replayed(server, tmp_path):
    out = tmp_path / "out"
    t = Tracker(server.uri, "outage")
    t.set_spool(out / SPOOL_DIR)
    rid = t.start_run("unit", {"role": "teacher"})
    t.log_metrics(rid, {"loss": 1.0}, step=1)

    server.kill()  # a server restart mid-run
    tries = []
    real_do = t._do
    t._do = lambda rec: tries.append(rec["op"]) or real_do(rec)  # every attempt to reach the server
    t.log_metrics(rid, {"loss": 0.5}, step=2)  # fails (its retries), then spooled
    assert tries and len(tries) <= 3
    tries.clear()
    t.log_metrics(rid, {"loss": 0.25}, step=3)  # spooled at once: no second round of retries
    t.set_tags(rid, {"note": "while down"})
    (tmp_path / "result.csv").write_text("a,b\n1,2\n")
    t.log_artifacts(rid, [tmp_path / "result.csv"])
    assert tries == [], "logging while the server is down went to the server again (the caller stalls)"
    del t._do
    spooled = list((out / SPOOL_DIR).glob("spool-*.jsonl"))
    assert len(spooled) == 1 and len(spooled[0].read_text().splitlines()) == 4

    server.start()  # back, same store
    t._down_until = 0.0  # as after RETRY_AFTER_S
    t.log_metrics(rid, {"loss": 0.125}, step=4)  # the next call replays the spool first
    assert _history(server.uri, rid, "loss") == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(server.uri)
    assert c.get_run(rid).data.tags["note"] == "while down"
    assert [a.path for a in c.list_artifacts(rid)] == ["result.csv"]
    assert not list((out / SPOOL_DIR).glob("spool-*"))  # replayed lines are gone


def test_replay_command_after_the_run_and_idempotent(server, tmp_path):
    """A worker process spools and exits while the server is down; `python -m asc_ray.tracking replay OUT`
    sends it all once the server is back; running it again sends nothing and adds no duplicate."""
    out = tmp_path / "out"
    t = Tracker(server.uri, "outage")
    rid = t.start_run("unit", {"role": "student"})
    server.kill()
    code = (
        "import sys\nfrom asc_ray.tracking import Tracker\n"
        f"t = Tracker({server.uri!r}, 'outage'); t.set_spool({str(out / SPOOL_DIR)!r})\n"
        f"for e in range(1, 4): t.log_metrics({rid!r}, {{'val_macro_acc': e / 10}}, step=e)\n"
        f"t.finish({rid!r})\n"
    )
    env = cli_env()
    r = run_py(["-c", code], env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(out / SPOOL_DIR) in r.stderr  # one warning says where the calls went
    server.start()
    cmd = ["-m", "asc_ray.tracking", "replay", str(out), "--tracking-uri", server.uri]
    r = run_py(cmd, env, timeout=120)
    assert r.returncode == 0 and "replayed 4 " in r.stdout, r.stdout + r.stderr
    from mlflow.tracking import MlflowClient

    assert _history(server.uri, rid, "val_macro_acc") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert MlflowClient(server.uri).get_run(rid).info.status == "FINISHED"
    r = run_py(cmd, env, timeout=120)
    assert r.returncode == 0 and "replayed 0 " in r.stdout, r.stdout + r.stderr
    assert _history(server.uri, rid, "val_macro_acc") == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_a_run_made_while_the_server_restarts_waits_for_it_and_is_made_once(server, tmp_path):
    """A unit that starts while the server restarts waits for it (Tracker.start_run, up to START_WAIT_S) instead
    of failing or going without a run; its token makes sure that one run is made, however the restart fell."""
    import threading

    t = Tracker(server.uri, "outage")
    t.set_spool(tmp_path / "out" / SPOOL_DIR)
    t.experiment_id()
    server.kill()
    got = []
    waiting = threading.Thread(
        target=lambda: got.append(t.start_run("unit", {"role": "teacher"}, token="tok1"))
    )
    waiting.start()
    server.start()
    waiting.join(300)
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(server.uri).search_runs([t.experiment_id()], "tags.run_token = 'tok1'")
    assert got and got[0] is not None and [r.info.run_id for r in runs] == got
