"""The MLflow side of the command line: the UI on a run's store, a registered student served over HTTP, and
moving a student's @champion alias by hand."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from asc_ray.errors import AscRayError
from asc_ray.predict.mlflow_model import CHAMPION, promote_version
from asc_ray.tracking import resolve_tracking_uri

URI_HELP = "the tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)"


def _mlflow(args: list[str], env: dict | None = None) -> int:
    """The MLflow CLI of this Python, with its folder first on PATH: MLflow starts uvicorn and gunicorn by
    name, which a shell without the venv activated would not find."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # a session of its own: MLflow's server starts workers and a job runner, which must stop with it
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args], env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (asc_ray.console): the server stops with this command
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(30)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # what outlived the server (its job runner)
            os.killpg(proc.pid, signal.SIGKILL)
        raise


def ui(argv: list[str] | None = None, prog: str = "asc-ray mlflow-ui") -> int:
    p = argparse.ArgumentParser(
        prog=prog, description="Open the MLflow UI on a tracking store; print its link."
    )
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=URI_HELP)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)"
    )
    p.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    a = p.parse_args(argv)
    uri = resolve_tracking_uri(a.tracking_uri)
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI
        print(f"MLflow UI: {uri}")
        return 0
    print(f"MLflow UI: http://{a.host}:{a.port}  (store {uri}; Ctrl-C stops it)", flush=True)
    return _mlflow(["ui", "--backend-store-uri", uri, "--host", a.host, "--port", str(a.port)])


def serve(argv: list[str] | None = None, prog: str = "asc-ray serve") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description='Serve a registered student over HTTP: POST /invocations with {"inputs": [[samples...], ...]} '
        "(mono waveforms at the model's sample rate) returns the scene probabilities.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="an MLflow model URI: models:/asc-ray-<system>-split<N>@champion (or @challenger, or /<version>), "
        "runs:/<run id>/model",
    )
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=URI_HELP)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)"
    )
    p.add_argument("--port", type=int, default=5001, help="(default: %(default)s)")
    a = p.parse_args(argv)
    env = dict(os.environ, MLFLOW_TRACKING_URI=resolve_tracking_uri(a.tracking_uri))
    # the model's own environment is this one (it needs torch and torchaudio, which asc-ray has)
    args = ["models", "serve", "-m", a.model, "--env-manager", "local", "-h", a.host, "-p", str(a.port)]
    print(f"serving {a.model} at http://{a.host}:{a.port}/invocations (Ctrl-C stops it)", flush=True)
    return _mlflow(args, env)


def promote(argv: list[str] | None = None, prog: str = "asc-ray promote") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"Point a registered student's @{CHAMPION} alias at one of its versions (what `asc-ray serve "
        f"models:/NAME@{CHAMPION}` serves).",
    )
    p.add_argument("name", metavar="NAME", help="registered model, e.g. asc-ray-kd_ensemble-split100")
    p.add_argument(
        "version", metavar="VERSION", help="its version number, or 'challenger' (the latest trained)"
    )
    p.add_argument("--alias", default=CHAMPION, help="the alias to move (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=URI_HELP)
    a = p.parse_args(argv)
    if not a.alias.isidentifier():
        raise AscRayError(
            f"'{a.alias}' is not a valid alias", path="--alias", fix="use letters, digits and _"
        )
    v = promote_version(resolve_tracking_uri(a.tracking_uri), a.name, a.version, a.alias)
    print(f"models:/{a.name}@{a.alias} -> version {v}")
    return 0
