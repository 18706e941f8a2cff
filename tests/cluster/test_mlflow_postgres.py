"""MLflow as the cluster runs it, for real (slow): a private PostgreSQL (Debian's `postgresql`: .ci/run installs
it; skipped, saying so, without it), `scripts/mlflow_server.sh` on it with MLflow's basic-auth app and --serve-artifacts (as cluster.yaml's
head starts it), and the asc-ray user that script creates as the admin. Then:

- a client without credentials (or with a wrong password) is refused, and `jobs/full_pipeline.py` without them
  stops in pre-flight naming MLFLOW_TRACKING_USERNAME;
- a one-split pipeline logged in as asc-ray finishes: the parent run, a child run per unit with its metric
  history, artifacts stored by the server (mlflow-artifacts:/), registered models with @challenger and
  @champion, and the champion loads by alias and predicts; the runs are asc-ray's (another user reads them,
  but cannot write to them);
- afterwards no process is left: the server, its workers, PostgreSQL.

Measured: 3 min 4 s on 2 CPU cores (PostgreSQL already installed; CI installs it first), most of it the
pipeline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.console import said
from helpers.procs import PY, ROOT, alive, cli_env, cmdline, free_port, pipeline_args, run_py
from helpers.serving import env_with_venv_bin
from helpers.wait import wait_for

from asc_ray.procs import pids, session
from asc_ray.tracking import ANONYMOUS, REFUSED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SCRIPT = ROOT / "scripts" / "mlflow_server.sh"
USER, ADMIN = "asc-ray", "admin"
SPLIT, STUDENTS, TEACHER = 25, ("kd_ensemble", "baseline"), "bcbl32_fms"


# ------------------------------------------------------------------------------------------ what it needs
def _pg_bindir() -> Path | None:
    """The newest PostgreSQL's server programs (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _server_modules_missing() -> bool:
    probe = "import psycopg, flask_wtf"  # the postgresql:// driver, the basic-auth app's CSRF
    return subprocess.run([PY, "-c", probe], capture_output=True).returncode != 0


@pytest.fixture(scope="module")
def pg_bin() -> Path:
    """PostgreSQL's programs and the server's Python packages (.ci/run installs Debian's postgresql; the dev
    extras bring psycopg and Flask-WTF)."""
    if _pg_bindir() is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl: `apt-get install -y postgresql` (as .ci/run does)")
    if _server_modules_missing():
        pytest.skip(f"needs psycopg and Flask-WTF in {PY}: `pip install -e '.[dev]'` (the server extras)")
    return _pg_bindir()


def _secret(folder: Path, name: str, owner: int | None = None) -> Path:
    """A file holding a fresh password, readable by its owner only (as the files cluster.yaml copies)."""
    f = folder / name
    f.write_text(base64.urlsafe_b64encode(os.urandom(18)).decode() + "\n")
    f.chmod(0o600)
    if owner is not None:
        os.chown(f, owner, -1)
    return f


@pytest.fixture(scope="module")
def postgres(pg_bin, tmp_path_factory):
    """A private PostgreSQL cluster on a free port of 127.0.0.1, superuser `mlflow` with a password; removed
    afterwards. initdb refuses root: as root it runs as Debian's `postgres` user, in a folder of its own."""
    run_as = {}
    folder = Path(tempfile.mkdtemp(prefix="asc-ray-pg-"))  # not under pytest's root-only tmp folder
    secrets = tmp_path_factory.mktemp("secrets")
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL as")
        os.chown(folder, pg_user.pw_uid, pg_user.pw_gid)
        run_as = {"user": pg_user.pw_uid, "group": pg_user.pw_gid, "extra_groups": []}
    pw = _secret(secrets, "postgres_password")
    initdb_pw = folder / "pwfile"
    shutil.copy(pw, initdb_pw)
    if run_as:
        os.chown(initdb_pw, run_as["user"], -1)
    port, data, log = free_port(), folder / "data", folder / "postgres.log"

    def pg(*args, timeout=120):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=folder, **run_as)
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"

    pg(str(pg_bin / "initdb"), "-D", str(data), "-U", "mlflow", f"--pwfile={initdb_pw}",
       "--auth=scram-sha-256", "-E", "UTF8", "--locale=C")  # fmt: skip
    initdb_pw.unlink()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder}"
    try:
        # -w: returns once the server accepts connections
        pg(str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "start")
        yield {"uri": f"postgresql://mlflow@127.0.0.1:{port}/mlflow", "password_file": pw, "data": data}
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
    assert not _processes_with(str(data)), "PostgreSQL still runs"


def _processes_with(needle: str) -> list[str]:
    """Command lines of the live processes that mention `needle`."""
    return [c for pid in pids() if alive(pid) and needle in (c := cmdline(pid))]


def _session(sid: int) -> list[str]:
    """Command lines of the live processes of session `sid`."""
    return [cmdline(pid) for pid in session(sid) if alive(pid)]


# ------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """scripts/mlflow_server.sh with PostgreSQL + basic-auth, the admin's and asc-ray's passwords from files,
    as cluster.yaml's head runs it; until it has created the user asc-ray. Stopped (its whole session) after."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    secrets = postgres["password_file"].parent
    admin_pw, user_pw = _secret(secrets, "mlflow_admin_password"), _secret(secrets, "mlflow_password")
    port = free_port()
    env = env_with_venv_bin(tmp)  # the venv's mlflow, uvicorn, python first on PATH
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        env.pop(k, None)
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        WORKERS="1",
        AUTH="1",  # on by default for any other address; 127.0.0.1 defaults to none
        BACKEND_STORE_URI=postgres["uri"],
        PGPASSWORD_FILE=str(postgres["password_file"]),
        MLFLOW_AUTH_ADMIN_PASSWORD_FILE=str(admin_pw),
        CLIENT_USERNAME=USER,
        CLIENT_PASSWORD_FILE=str(user_pw),
        ARTIFACTS_DESTINATION=str(tmp / "artifacts"),
        TMPDIR=str(tmp),  # the script's auth settings file
    )
    log = tmp / "server.log"
    with open(log, "w") as fh:
        p = subprocess.Popen(
            ["bash", str(SCRIPT)],
            env=env,
            cwd=tmp,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: f"[mlflow_server] user {USER} created" in log.read_text(),
            600,
            f"the server to answer and create user {USER}",
            p,
            lambda: log.read_text()[-4000:],
            interval=0.5,
        )
        yield {
            "uri": uri,
            "artifacts": tmp / "artifacts",
            "admin": (ADMIN, admin_pw.read_text().strip()),
            "user": (USER, user_pw.read_text().strip()),
            "log": log,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)  # its own session: the server, its workers, its job runner
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # workers that outlived the server
        p.wait(30)
        wait_for(
            lambda: not _session(p.pid) and not _processes_with(f"--port {port}"),
            60,
            "the MLflow server's processes to exit",
            details=lambda: "\n".join(_session(p.pid)),
        )


def rest(
    server, path: str, auth: tuple[str, str] | None = None, body: dict | None = None
) -> tuple[int, dict]:
    """(status, JSON answer) of an MLflow REST call, as `auth` (user, password) or anonymous."""
    req = urllib.request.Request(
        server["uri"] + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {"body": e.read().decode(errors="replace")}


def user_env(server, **extra) -> dict:
    """The environment of a client logged in as asc-ray (as cluster.yaml gives every Ray process)."""
    name, password = server["user"]
    return cli_env(server["uri"], MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=password, **extra)


# ------------------------------------------------------------------------------------------------ tests
def test_the_server_lets_in_only_its_users(server):
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert rest(server, search)[0] == 401  # anonymous
    assert rest(server, search, (USER, "not-the-password"))[0] == 401
    assert rest(server, search, server["user"])[0] == 200
    status, answer = rest(server, f"/api/2.0/mlflow/users/get?username={USER}", server["admin"])
    assert status == 200 and answer["user"]["is_admin"] is False  # created by the script, as the admin
    # asc-ray is no admin: it cannot make users
    created = rest(
        server, "/api/2.0/mlflow/users/create", server["user"], {"username": "x", "password": "y" * 12}
    )
    assert created[0] == 403


def test_pipeline_without_credentials_stops_in_preflight(server, synth_dataset, tmp_path):
    r = run_py(
        pipeline_args(
            synth_dataset, tmp_path / "out", "--splits", str(SPLIT), "--profile", "smoke", "--epochs", "1"
        ),
        cli_env(server["uri"]),
        tmp_path,
        timeout=300,
    )
    text = r.stdout + r.stderr
    assert r.returncode == 2, text[-3000:]
    assert said(REFUSED.format(who=ANONYMOUS, status=401), text) and "MLFLOW_TRACKING_USERNAME" in text
    assert "Traceback" not in text


@pytest.fixture(scope="module")
def pipeline(server, synth_dataset, tmp_path_factory):
    """One split, one teacher, two students, one epoch each, logged in as asc-ray."""
    cwd = tmp_path_factory.mktemp("pipeline")
    r = run_py(
        [
            *pipeline_args(synth_dataset, cwd / "out"),
            "--splits",
            str(SPLIT),
            "--profile",
            "smoke",
            "--epochs",
            "1",
            f"teachers.systems=[{TEACHER}]",
            f"students.systems=[{','.join(STUDENTS)}]",
        ],
        user_env(server),
        cwd,
        timeout=1800,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return r


@pytest.fixture
def client(server):
    from mlflow.tracking import MlflowClient

    name, password = server["user"]
    os.environ.update(MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=password)  # `isolated` restores
    return MlflowClient(tracking_uri=server["uri"])


def test_runs_and_metric_histories_as_the_user(pipeline, server, client):
    exp = client.get_experiment_by_name("asc-ray")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    trained = {(r.data.tags["role"], r.data.tags["system"]): r for r in children if r.data.tags.get("role")}
    assert {("teacher", TEACHER)} | {("student", s) for s in STUDENTS} <= set(trained), sorted(trained)
    for r in trained.values():
        assert r.info.status == "FINISHED" and r.data.tags["split"] == str(SPLIT)
        assert len(client.get_metric_history(r.info.run_id, "train_loss")) == 1  # --epochs 1: one point
        assert 0.0 <= r.data.metrics["test_macro_acc"] <= 1.0
        # artifacts went through the server (--serve-artifacts) into its store, not to a local folder
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/"), r.info.artifact_uri
    # the runs are asc-ray's: another user reads them (default_permission = READ) but cannot write to them
    reader = ("reader", "reader-password-" + os.urandom(4).hex())
    body = {"username": reader[0], "password": reader[1]}
    assert rest(server, "/api/2.0/mlflow/users/create", server["admin"], body)[0] == 200
    run_id = parents[0].info.run_id
    assert rest(server, f"/api/2.0/mlflow/runs/get?run_id={run_id}", reader)[0] == 200
    metric = {"run_id": run_id, "key": "x", "value": 1.0, "timestamp": 0, "step": 0}
    assert rest(server, "/api/2.0/mlflow/runs/log-metric", reader, metric)[0] == 403
    assert rest(server, "/api/2.0/mlflow/runs/log-metric", server["user"], metric)[0] == 200


def test_registered_models_have_both_aliases_and_served_artifacts(pipeline, server, client):
    for system in STUDENTS:
        name = f"asc-ray-{system}-split{SPLIT}"
        champion = client.get_model_version_by_alias(name, "champion")
        challenger = client.get_model_version_by_alias(name, "challenger")
        assert champion.version == challenger.version == "1"  # the first version is both
        assert champion.source.startswith("mlflow-artifacts:/"), champion.source
        assert [a.path for a in client.list_artifacts(champion.run_id, "model") if a.path.endswith("MLmodel")]
    stored = list(server["artifacts"].rglob("model/MLmodel"))  # on the server's side only
    assert len(stored) == len(STUDENTS), stored


def test_champion_loads_by_alias_and_predicts(pipeline, server, tmp_path):
    code = (
        "import json, mlflow, numpy as np\n"
        f"m = mlflow.pyfunc.load_model('models:/asc-ray-kd_ensemble-split{SPLIT}@champion')\n"
        "sr = m.metadata.metadata['asc_ray']['sample_rate']\n"
        "p = m.predict((np.random.default_rng(0).standard_normal((3, sr)) * 0.1).astype(np.float32))\n"
        "print(json.dumps({'shape': list(p.shape), 'sums': p.sum(axis=1).tolist()}))\n"
    )
    r = run_py(["-c", code], user_env(server), tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"] == [3, 10]  # 10 scene probabilities per clip
    assert all(abs(s - 1) < 1e-3 for s in out["sums"])
    anonymous = run_py(["-c", code], cli_env(server["uri"]), tmp_path, timeout=600)
    assert anonymous.returncode != 0 and "401" in anonymous.stderr
