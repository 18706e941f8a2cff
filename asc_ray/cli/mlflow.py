"""The MLflow side of the command line: the UI on a run's store, a registered student served over HTTP, and
moving a student's @champion alias by hand. Each finds the store by asc_ray.mlflow_store's rule, says which,
and never creates an empty one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from asc_ray.cli.server import Server, url, with_port
from asc_ray.errors import AscRayError
from asc_ray.mlflow_store import OUTPUT_DIR_HELP, STORE_URIS, URI_HELP, find_model
from asc_ray.tracking import open_store

UI_PORT, SERVE_PORT = 5000, 5001
UI_LINK = "MLflow UI: {url}  (store {uri}; Ctrl-C stops it)"
SERVING = "serving {model} ({what}) at {url}/invocations  (Ctrl-C stops it)"
NOT_A_MODEL = "not an MLflow model folder (no MLmodel file in it)"
MODEL_FIX = (
    "pass a registered student (models:/asc-ray-<system>-split<N>@champion), a run's model (runs:/<run id>/model) "
    "or a downloaded model folder (with MLmodel)"
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default=None, metavar="OUTPUT_DIR", help=OUTPUT_DIR_HELP)
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=URI_HELP)


def _server_options(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"(default: {default_port}, or the next free port when it is taken; a --port that is taken is "
        "refused)",
    )


def ui(argv: list[str] | None = None, prog: str = "asc-ray mlflow-ui") -> int:
    p = argparse.ArgumentParser(
        prog=prog, description="Open the MLflow UI on a run's store; print its link once it answers."
    )
    _store_options(p)
    _server_options(p, UI_PORT)
    a = p.parse_args(argv)
    uri = open_store(a.tracking_uri, a.output_dir, say=_say).uri
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI (it answered just now)
        print(f"MLflow UI: {uri}")
        return 0
    port = with_port(a.host, a.port, UI_PORT, _say)
    # one worker process: the UI serves one person (MLflow starts four by default, each importing MLflow)
    args = ["-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", a.host, "--port", str(port)]
    server = Server(
        [*args, "--workers", "1"], dict(os.environ), "the MLflow UI", url(a.host, port) + "/health"
    )
    server.run(UI_LINK.format(url=url(a.host, port), uri=uri), _say)


def _check_model(model: str, a) -> tuple[dict, str]:
    """(the server's environment, what MODEL is), or one AscRayError: a store URI naming nothing in the store,
    a folder without MLmodel, a path that does not exist."""
    env = dict(os.environ)
    if model.startswith(STORE_URIS):
        uri = open_store(a.tracking_uri, a.output_dir, say=_say).uri
        env["MLFLOW_TRACKING_URI"] = uri  # what `mlflow models serve` resolves the model in
        return env, find_model(uri, model)[0]
    if "://" in model and not model.startswith("file://"):
        return env, "as MLflow fetches it"  # s3://, mlflow-artifacts://, ...: MLflow says what is wrong
    path = Path(model[len("file://") :] if model.startswith("file://") else model)
    if not path.exists():
        raise AscRayError("model not found", path=path, fix=MODEL_FIX)
    if not (path / "MLmodel").is_file():
        unit = (path / "unit.json").is_file()  # a unit folder of a run
        fix = f"a unit folder is classified with `asc-ray predict {path} AUDIO...`; to serve, {MODEL_FIX}"
        raise AscRayError(NOT_A_MODEL, path=path, fix=fix if unit else MODEL_FIX)
    return env, "a model folder"


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
        "runs:/<run id>/model, or a model folder (with MLmodel)",
    )
    _store_options(p)
    _server_options(p, SERVE_PORT)
    a = p.parse_args(argv)
    env, what = _check_model(a.model, a)
    port = with_port(a.host, a.port, SERVE_PORT, _say)
    # the model's own environment is this one (it needs torch and torchaudio, which asc-ray has)
    args = ["-m", "mlflow", "models", "serve", "-m", a.model, "--env-manager", "local"]
    server = Server(
        [*args, "-h", a.host, "-p", str(port)],
        env,
        f"the model server for {a.model}",
        url(a.host, port) + "/ping",
    )
    server.run(SERVING.format(model=a.model, what=what, url=url(a.host, port)), _say)


def promote(argv: list[str] | None = None, prog: str = "asc-ray promote") -> int:
    from asc_ray.predict.mlflow_model import CHAMPION, promote_version  # MLflow: seconds to import

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
    _store_options(p)
    a = p.parse_args(argv)
    if not a.alias.isidentifier():
        raise AscRayError(
            f"'{a.alias}' is not a valid alias", path="--alias", fix="use letters, digits and _"
        )
    v = promote_version(open_store(a.tracking_uri, a.output_dir, say=_say).uri, a.name, a.version, a.alias)
    print(f"models:/{a.name}@{a.alias} -> version {v}")
    return 0
