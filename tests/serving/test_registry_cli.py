"""A registered student by alias, from the `asc-ray` command: @challenger on each new version, @champion moved
only by the validation holdout (never test) or by `asc-ray promote`; `asc-ray serve` answers over HTTP from a
shell without the venv on PATH, and `asc-ray mlflow-ui` serves the store it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.procs import free_port
from helpers.wait import wait_for_http

from asc_ray.predict import load_classifier
from asc_ray.predict.mlflow_model import CHALLENGER, CHAMPION, log_unit_model, register_students
from asc_ray.procs import pids
from asc_ray.tracking import Tracker, default_artifact_location

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "asc-ray-baseline-split100"
ASC_RAY = [str(Path(sys.executable).parent / "asc-ray")]  # the console script, as a user runs it


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Until `url` answers 200 (the server is up); at once when the process died, with its output."""
    wait_for_http(
        url, timeout, proc=proc, details=lambda: proc.stdout.read() if proc.poll() is not None else ""
    )


def _bare_env(uri: str) -> dict:
    """A shell that has not activated the venv: no venv bin/ on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri}


@pytest.fixture(scope="module")
def registry(student_unit, tmp_path_factory):
    """Three versions of one student, registered as pipeline runs do, with validation figures 0.5, 0.4, 0.6."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    t = Tracker(uri, "asc-ray", default_artifact_location(uri, "asc-ray", root))  # never ./mlruns
    base = json.loads((student_unit / "result.json").read_text())
    champions = []
    for i, val in enumerate((0.5, 0.4, 0.6)):
        parent = t.start_run(f"pipeline {i}", {"role": "pipeline"})
        run_id = t.start_run("baseline split100", {"role": "student"}, parent)
        log_unit_model(t, run_id, student_unit)
        t.finish(run_id)
        rec = {**base, "run_id": run_id, "key": f"key{i}", "val_macro_acc": val}
        lines = []
        register_students(t, parent, [rec], None, log=lines.append)
        champions.append(next(ln for ln in lines if f"@{CHALLENGER} = " in ln))  # the aliases' line
    return {"uri": uri, "lines": champions, "root": root}


def test_challenger_is_the_latest_and_champion_moves_only_on_validation(registry):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=registry["uri"])
    assert str(c.get_model_version_by_alias(NAME, CHALLENGER).version) == "3"
    assert str(c.get_model_version_by_alias(NAME, CHAMPION).version) == "3"  # 0.6 > 0.5 (0.4 did not move it)
    first, second, third = registry["lines"]
    assert "moved here (the first version)" in first
    assert "stays on version 1" in second and "asc-ray promote" in second
    assert "moved here" in third


def test_promote_by_hand_and_load_by_alias(registry):
    r = subprocess.run(
        [*ASC_RAY, "promote", NAME, "2", "--tracking-uri", registry["uri"]], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    os.environ["MLFLOW_TRACKING_URI"] = registry["uri"]
    try:
        clf = load_classifier(f"models:/{NAME}@{CHAMPION}")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert clf.spec["system"] == "baseline"
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=registry["uri"])
    assert str(c.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    bad = subprocess.run(
        [*ASC_RAY, "promote", NAME, "9", "--tracking-uri", registry["uri"]], capture_output=True, text=True
    )
    assert bad.returncode == 2 and NAME in bad.stderr and "fix:" in bad.stderr


def test_predict_by_alias_reads_the_output_dirs_store_from_anywhere(registry, student_unit, tmp_path):
    """No MLFLOW_TRACKING_URI: --output-dir names the store, and nothing is created where the command runs
    (MLflow itself resolves models:/ in its process-wide default store, ./mlflow.db)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(32000, np.float32), 32000)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run(
        [*ASC_RAY, "predict", f"models:/{NAME}@{CHAMPION}", clip, "--output-dir", registry["root"]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(clip) in r.stdout and not any(cwd.iterdir())


def test_serve_by_alias_from_a_shell_without_the_venv(registry, student_unit):
    port = free_port()
    cmd = [*ASC_RAY, "serve", f"models:/{NAME}@{CHALLENGER}", "--port", str(port)]
    p = subprocess.Popen(
        cmd, env=_bare_env(registry["uri"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", p)
        waves = np.random.default_rng(0).standard_normal((2, 32000)).astype(np.float32) * 0.1
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": waves.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())["predictions"]
        got = np.array(
            [[row[c] for c in load_classifier(str(student_unit)).spec["classes"]] for row in answer]
        )
        want = load_classifier(str(student_unit)).probabilities(list(waves))
        np.testing.assert_allclose(got, want, atol=1e-6)
    finally:
        p.terminate()
        p.wait(30)


def test_mlflow_ui_serves_the_store_it_names_and_stops_with_the_command(registry):
    port = free_port()
    cmd = [*ASC_RAY, "mlflow-ui", "--tracking-uri", registry["uri"], "--port", str(port)]
    env = _bare_env("sqlite:///elsewhere.db")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", p)
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/registered-models/get?name={NAME}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert json.loads(r.read())["registered_model"]["name"] == NAME
    finally:
        p.terminate()  # SIGTERM to the command: its MLflow server must go too (the pipe closes)
        out, _ = p.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}" in out
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    # nothing of the server is left: MLflow's job runner and its consumers carry the server's address
    assert _serving(f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}") == []


def _serving(marker: str) -> list[int]:
    """Processes whose environment holds `marker`."""
    found = []
    for pid in pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in env:
            found.append(int(pid))
    return found
