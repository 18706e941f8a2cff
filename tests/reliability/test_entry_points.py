"""Every sub-command of the installed `asc-ray` ends in its result or in one `error:` + `fix:` pair with exit
status 2: never a traceback, never exit 0 on a failure, and nothing created on disk before the input is checked.
Each case runs the console script as a user does, in a user's environment (no MLFLOW_TRACKING_URI: the store is
found by asc-ray's own rule; no GPU). Slow: the cases that import MLflow's model code or open a real store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from importlib import metadata

import numpy as np
import pytest
import soundfile as sf
from helpers.procs import (
    ASC_RAY,
    alive,
    asc_ray,
    descendants,
    free_port,
    listening_sockets,
    sigint_default,
    user_env,
)
from helpers.wait import http_status, wait_for

from asc_ray.cli.mlflow import NOT_A_MODEL, UI_LINK
from asc_ray.cli.server import PORT_MOVED, PORT_TAKEN, STOP_GRACE_S, holder, with_port
from asc_ray.config import (
    AUTO_NO_GPU,
    CONFIG_MISSING_FIX,
    FULL_CPU_CORE_HOURS,
    FULL_WITHOUT_GPU,
    GIVEN,
    PROFILE_LINE,
)
from asc_ray.data.download import DATASETS, UNKNOWN_DATASET
from asc_ray.data.fetch import BACKOFF_S, RETRIES, UNRESOLVED
from asc_ray.io import YAML_ERROR
from asc_ray.mlflow_store import (
    FROM_ENV,
    FROM_HERE,
    FROM_OUTPUT_DIR,
    HOLDS_NONE,
    NO_MODEL,
    NO_STORE,
    STORE_FILE,
    STORE_LINE,
    Store,
    read_fix,
)
from asc_ray.tracking import UNREACHABLE

MODEL = "models:/asc-ray-kd_ensemble-split100@champion"


def assert_one_error(r, *names) -> str:
    """Exit 2, no traceback, one `error:` and one `fix:` on stderr naming each of `names`; the message."""
    text = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert r.stderr.count("error: ") == 1 and r.stderr.count("\n  fix: ") == 1, r.stderr[-3000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    for name in names:
        assert str(name) in msg, f"{name!r} not in:\n{msg}"
    return msg


def _fixed(template: str, **known) -> str:
    """The start of a message template, `known` fields filled in, up to its first field not known."""
    return template.format_map(_Unknown(known)).split("\0")[0]


class _Unknown(dict):
    def __missing__(self, key):
        return "\0"


@pytest.fixture
def cwd(tmp_path):
    """An empty folder to run from: anything a command leaves in it shows."""
    d = tmp_path / "cwd"
    d.mkdir()
    return d


# ------------------------------------------------------------------------------------ help, data, config
def test_version():
    r = asc_ray("--version", env=user_env())
    assert r.returncode == 0 and r.stdout.strip() == f"asc-ray {metadata.version('asc-ray')}", r


def test_data_help_lists_the_datasets():
    r = asc_ray("data", "--help", env=user_env())
    assert r.returncode == 0, r.stderr
    for name, (what, _) in DATASETS.items():
        assert name in r.stdout and what in r.stdout, r.stdout


def test_an_unknown_dataset_is_named(tmp_path, cwd):
    r = asc_ray("data", "tau23", tmp_path / "x", env=user_env(), cwd=cwd)
    assert_one_error(r, UNKNOWN_DATASET.format(name="tau23"), *DATASETS)
    assert not (tmp_path / "x").exists()


def test_an_offline_download_fails_at_once_with_the_from_advice(tmp_path, cwd):
    """A host name that does not resolve (RFC 6761's .invalid: no network needed to prove it) is no network
    to wait for: no retries with backoff, and the advice to bring the files in with --from file://."""
    start = time.monotonic()
    r = asc_ray(
        "data", "tau22", tmp_path / "tau22", "--from", "http://asc-ray.invalid/m", env=user_env(), cwd=cwd
    )
    took = time.monotonic() - start
    assert_one_error(r, UNRESOLVED.format(host="asc-ray.invalid"), "--from file://")
    assert took < BACKOFF_S * 2 ** (RETRIES - 1), f"{took:.0f} s: retried"  # the retries alone take 62 s
    assert not list((tmp_path / "tau22").rglob("*.part"))


def test_a_broken_yaml_config_gives_its_line_and_column(tmp_path, cwd):
    bad = tmp_path / "my.yaml"
    bad.write_text("kd:\n  lam: 0.5\n bcbl:\n   epochs: 3\n")  # line 3 is indented by one space
    r = asc_ray(
        "run", "--config", bad, "--data-dir", tmp_path, "--output-dir", tmp_path / "out", env=user_env()
    )
    msg = assert_one_error(r, bad, _fixed(YAML_ERROR, what="config file", line=3, column=2))
    assert CONFIG_MISSING_FIX not in msg  # the file exists: the fix is about its content
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ asc-ray run
@pytest.mark.parametrize(
    "profile", [None, pytest.param("full", marks=pytest.mark.slow)], ids=["no-profile", "full"]
)
def test_a_missing_data_dir_creates_nothing_and_the_profile_comes_first(tmp_path, cwd, profile):
    out, data = tmp_path / "out", tmp_path / "no-such-dir"
    args = ["run", "--data-dir", data, "--output-dir", out, *(["--profile", profile] if profile else [])]
    r = asc_ray(*args, env=user_env(), cwd=cwd)
    assert_one_error(r, data, "--data-dir")
    assert not out.exists() and not any(cwd.iterdir())  # no output folder, no store (there or here)
    lines = r.stdout.splitlines()
    if profile is None:  # no GPU (user_env): smoke, and why, on the first line
        assert lines[0].endswith(PROFILE_LINE.format(profile="smoke", why=AUTO_NO_GPU)), lines
    else:  # asked for: said so, then how long it would take here
        assert lines[0].endswith(PROFILE_LINE.format(profile="full", why=GIVEN)), lines
        hours = FULL_CPU_CORE_HOURS / os.cpu_count()
        warning = FULL_WITHOUT_GPU.format(hours=hours, days=hours / 24, cores=os.cpu_count())
        assert lines[1].endswith(warning), lines


# ------------------------------------------------------------------------------- the MLflow store
def _wav(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(32000, np.float32), 32000)
    return path


READERS = {  # the commands that read a store, each asked for something in it
    "mlflow-ui": lambda tmp: ["mlflow-ui"],
    "serve": lambda tmp: ["serve", MODEL],
    "promote": lambda tmp: ["promote", "asc-ray-kd_ensemble-split100", "1"],
    "predict": lambda tmp: ["predict", MODEL, _wav(tmp)],
}
HEAVY = {"promote", "predict"}  # they import MLflow's model code or torch first: seconds


def _readers():
    return [pytest.param(n, marks=[pytest.mark.slow] if n in HEAVY else []) for n in READERS]


@pytest.mark.parametrize("command", _readers())
def test_a_reader_never_creates_an_empty_store(command, tmp_path, cwd):
    run = tmp_path / "run"
    run.mkdir()
    r = asc_ray(*READERS[command](tmp_path), "--output-dir", run, env=user_env(), cwd=cwd)
    db = run / STORE_FILE
    assert STORE_LINE.format(uri=f"sqlite:///{db}", why=FROM_OUTPUT_DIR) in r.stderr, r.stderr
    assert_one_error(r, NO_STORE, db, "--output-dir")
    assert not db.exists() and not any(cwd.iterdir())


def test_without_output_dir_the_store_is_this_folders_and_the_fix_says_how_to_name_one(cwd):
    r = asc_ray("mlflow-ui", env=user_env(), cwd=cwd)
    assert STORE_LINE.format(uri=f"sqlite:///{cwd / STORE_FILE}", why=FROM_HERE) in r.stderr, r.stderr
    assert_one_error(r, NO_STORE, cwd / STORE_FILE, "--output-dir", "MLFLOW_TRACKING_URI")
    # named by the environment: the fix is about the environment
    elsewhere = cwd / "elsewhere.db"
    r = asc_ray("mlflow-ui", env=user_env(MLFLOW_TRACKING_URI=f"sqlite:///{elsewhere}"), cwd=cwd)
    assert_one_error(r, NO_STORE, read_fix(Store(f"sqlite:///{elsewhere}", FROM_ENV)))
    assert not any(cwd.iterdir())


@pytest.mark.parametrize("command", _readers())
def test_an_unreachable_store_is_one_error(command, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    r = asc_ray(*READERS[command](tmp_path), env=user_env(MLFLOW_TRACKING_URI=uri))
    assert STORE_LINE.format(uri=uri, why=FROM_ENV) in r.stderr, r.stderr
    assert_one_error(r, uri, _fixed(UNREACHABLE), "MLFLOW_TRACKING_URI")


# ------------------------------------------------------------------------------------- serve, mlflow-ui
def test_serve_refuses_a_folder_without_mlmodel(tmp_path):
    r = asc_ray("serve", tmp_path, env=user_env())
    assert_one_error(r, NOT_A_MODEL, tmp_path, "models:/")


def test_a_taken_port_given_with_port_is_refused_naming_its_holder(tmp_path):
    (tmp_path / STORE_FILE).touch()  # a store file (the port is checked before MLflow opens it)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = asc_ray("mlflow-ui", "--output-dir", tmp_path, "--port", port, env=user_env())
    assert_one_error(r, _fixed(PORT_TAKEN, port=port, host="127.0.0.1"), f"pid {os.getpid()}", "--port")


def test_a_taken_default_port_moves_to_the_next_free_one_and_says_which():
    said = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        port = with_port("127.0.0.1", None, taken, said.append)
        assert said == [PORT_MOVED.format(port=taken, holder=holder(taken), new=port)]
    assert port != taken and f"pid {os.getpid()}" in said[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # free indeed


# ------------------------------------------------------------- on a real MLflow store (slow: MLflow starts)
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run's output dir holding a real, initialised MLflow SQLite store without any registered model."""
    from asc_ray.tracking import check_tracking

    run = tmp_path_factory.mktemp("run")
    check_tracking(f"sqlite:///{run / STORE_FILE}")  # creates the tables (seconds)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "predict"])
def test_a_model_the_store_lacks_is_one_error_naming_the_store(command, store, tmp_path):
    r = asc_ray(*READERS[command](tmp_path), "--output-dir", store, env=user_env(), timeout=600)
    msg = assert_one_error(r, _fixed(NO_MODEL, uri=MODEL), f"sqlite:///{store / STORE_FILE}")
    assert HOLDS_NONE in msg.split("fix: ")[1]  # what the store holds: nothing


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_ui_prints_its_link_once_it_answers_and_stops_on_ctrl_c(store, tmp_path):
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as fh:
        p = subprocess.Popen(
            [str(ASC_RAY), "mlflow-ui", "--output-dir", str(store), "--port", str(port)],
            env=user_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            preexec_fn=sigint_default,
        )
    link = UI_LINK.format(url=f"http://127.0.0.1:{port}", uri=f"sqlite:///{store / STORE_FILE}")
    try:
        wait_for(lambda: link in log.read_text(), 400, "the link", p, lambda: log.read_text()[-3000:])
        assert http_status(f"http://127.0.0.1:{port}/health")[0] == 200  # it answers once printed
        server = descendants(p.pid)
        assert listening_sockets(server), "the UI's server listens"
        p_group = os.getpgid(p.pid)
        start = time.monotonic()
        os.killpg(p_group, signal.SIGINT)  # Ctrl-C in a terminal: the foreground group
        code = p.wait(30)
        took = time.monotonic() - start
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert code == 130 and took < STOP_GRACE_S + 5, (code, took, log.read_text()[-2000:])
    assert "Traceback" not in log.read_text()
    wait_for(lambda: not [pid for pid in server if alive(pid)], 10, "the server's processes to go")
    assert http_status(f"http://127.0.0.1:{port}/health")[0] == 0
