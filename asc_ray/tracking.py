"""MLflow logging with the plain MlflowClient: one parent run per pipeline invocation, one child run per
teacher and per student (tag `mlflow.parentRunId`), tags role / system / split / augment.

Workers log their own per-epoch metrics with the tracking URI the driver resolved (absolute, so every
process and node writes to the same store). A tracking hiccup in a worker is a warning, never a lost
model: the numbers are also on disk under the output dir.

Artifacts follow the store: MLflow would put a new experiment's artifacts in `./mlruns` of whichever process
created it (the repo root, or a job's temporary working dir under `ray job submit`), so the experiment is
created with its artifact location beside the SQLite database (`default_artifact_location`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from asc_ray.console import run_cli
from asc_ray.errors import AscRayError
from asc_ray.lock import OutputLock
from asc_ray.mlflow_store import (
    FROM_OPTION,
    NO_STORE,
    URI_HELP,
    Store,
    absolute_uri,  # noqa: F401 - re-exported: the URI helpers of the tracking layer
    locate_store,
    read_fix,
    sqlite_path,
)
from asc_ray.spool import Spool

SPOOL_DIR = "mlflow_spool"  # under the output dir: MLflow calls made while the server was down


ARTIFACTS_DIR = "mlartifacts"  # beside the database, as `mlflow server`'s own default artifact folder


def default_artifact_location(uri: str, experiment: str, output_dir: str | Path) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database (<its folder>/mlartifacts/<name>),
    under the output dir for another database (PostgreSQL, MySQL, ...), and where the store decides for an
    HTTP server (its artifact store) or a file store (its own folder)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)
    if safe != experiment:  # two names that read the same here must not share a folder
        safe += "-" + hashlib.sha256(experiment.encode()).hexdigest()[:8]
    db = sqlite_path(uri)
    if db is not None:
        return (db.parent / ARTIFACTS_DIR / safe).as_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql", "oracle"):
        return (Path(output_dir) / ARTIFACTS_DIR / safe).as_uri()
    return None


def local_artifact_path(location: str | None) -> Path | None:
    """The folder of an artifact location on this machine's file system (file: URI or a plain path), or None
    for a remote store (s3:, gs:, mlflow-artifacts:, http:, ...)."""
    if not location:
        return None
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):
        return None
    return Path(location).resolve()


MOUNTS = Path("/proc/mounts")
# file systems whose locks SQLite cannot trust: several writers over them lose or corrupt the database
NETWORK_FS = tuple("nfs nfs4 cifs smb3 smbfs 9p lustre glusterfs ceph gpfs beegfs fuse.sshfs".split())


def network_filesystem(path: Path) -> str | None:
    """The type of the network file system `path` lies on (nfs4, cifs, ...), None for a local disk (or where
    /proc/mounts cannot tell: not Linux)."""
    try:
        rows = [line.split() for line in MOUNTS.read_text().splitlines()]
    except OSError:
        return None
    path = Path(path).resolve()
    best, fstype = -1, None
    for row in rows:
        if len(row) < 3:
            continue
        point = Path(row[1].replace("\\040", " "))
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, fstype = len(point.parts), row[2]
    return fstype if fstype and (fstype in NETWORK_FS or fstype.startswith(("nfs", "fuse.sshfs"))) else None


UNREACHABLE = "MLflow tracking server unreachable: {reason}"

# what pre-flight says when the tracking server refuses this client
REFUSED = "MLflow tracking server refused {who} (HTTP {status})"
ANONYMOUS = "a client without credentials"


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail at start-up, before any training, when the tracking store cannot be reached, refuses this
    client, or is a SQLite file on a network file system."""
    fix = (
        "start the server (e.g. scripts/mlflow_server.sh), fix MLFLOW_TRACKING_URI / mlflow.tracking_uri, "
        "or unset it to use <output-dir>/mlflow.db"
    )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise AscRayError(f"MLflow tracking server answered {r.status}", path=uri, fix=fix)
        except (urllib.error.URLError, OSError) as e:
            raise AscRayError(UNREACHABLE.format(reason=getattr(e, "reason", e)), path=uri, fix=fix) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise AscRayError("MLflow SQLite store's folder is missing or not writable", path=folder, fix=fix)
        fs = network_filesystem(folder)
        if fs:
            raise AscRayError(
                f"MLflow SQLite store on a network file system ({fs}): SQLite's locks do not hold there, and "
                "several writers (the driver, every worker) lose or corrupt runs",
                path=sqlite_path(uri),
                fix="run an MLflow server on a database (scripts/mlflow_server.sh: PostgreSQL) and set "
                "MLFLOW_TRACKING_URI=http://<its address>:5000; or, on one machine, put the SQLite file on a "
                "local disk",
            )
    try:
        Tracker(uri, "asc-ray-check")._client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own types for an HTTP answer
        status = getattr(e, "get_http_status_code", lambda: None)()
        if status not in (401, 403):
            raise
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise AscRayError(
            REFUSED.format(who=f"user {who!r}" if who else ANONYMOUS, status=status),
            path=uri,
            fix="set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of the server (it runs "
            "MLflow's basic-auth app; its admin creates accounts)",
        ) from None


def open_store(
    named: str | None = None, output_dir: str | Path | None = None, named_by: str = FROM_OPTION, say=None
) -> Store:
    """For a command that reads a store (asc_ray.mlflow_store's rule): the store, said (on stderr by default),
    checked to exist and to answer this client; never created."""
    store = locate_store(named, output_dir, named_by)
    (say or (lambda m: print(m, file=sys.stderr, flush=True)))(store.line)
    db = sqlite_path(store.uri)
    if db is not None and not db.is_file():
        raise AscRayError(NO_STORE, path=db, fix=read_fix(store))
    if store.uri.startswith(("http://", "https://")):
        check_tracking(store.uri)
    return store


# MLflow 3 keeps an experiment's kind in this tag; its UI opens a "custom model development" experiment on
# its training runs instead of the GenAI traces overview (mlflow/server/js: ExperimentKind)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def mark_model_training(client, experiment_id: str) -> None:
    """Tag the experiment as model training (a warning, never an error, when the store refuses)."""
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as e:  # noqa: BLE001 - a cosmetic tag must never stop a run
        warnings.warn(
            f"could not tag MLflow experiment {experiment_id} as model training ({e})", stacklevel=2
        )


class Tracker:
    """A small, picklable wrapper: pass it to Ray workers, it reconnects there."""

    def __init__(self, uri: str, experiment: str = "asc-ray", artifact_location: str | None = None):
        self.uri = uri
        self.experiment = experiment
        self.artifact_location = artifact_location  # for the experiment, if this tracker creates it
        self._experiment_id: str | None = None
        self._warned = False
        self.spool_dir: str | None = None  # see set_spool

    def __getstate__(self):
        return {
            "uri": self.uri,
            "experiment": self.experiment,
            "artifact_location": self.artifact_location,
            "_experiment_id": self._experiment_id,
            "_warned": False,
            "spool_dir": self.spool_dir,
        }

    @property
    def _client(self):
        from mlflow.tracking import MlflowClient

        self._fail_fast()
        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            c = self._client
            exp = c.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._experiment_id = c.create_experiment(
                        self.experiment, artifact_location=self.artifact_location
                    )
                except Exception:  # noqa: BLE001 - created concurrently by another process
                    self._experiment_id = c.get_experiment_by_name(self.experiment).experiment_id
            else:
                self._experiment_id = exp.experiment_id
            if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                mark_model_training(c, self._experiment_id)
        return self._experiment_id

    def artifact_root(self) -> str:
        """Where the experiment's artifacts go (creating the experiment if needed)."""
        return self._client.get_experiment(self.experiment_id()).artifact_location

    def start_run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_id: str | None = None,
        run_id: str | None = None,
        token: str | None = None,
    ) -> str | None:
        """A new run (child when parent_id is given), or the existing `run_id` reopened (resume). `token`: the
        caller's own name for this run (tag `run_token`): a run made with it before is reopened, not made twice
        (its maker died before keeping the id, or the server died before answering). While the server is
        unreachable this waits up to START_WAIT_S for it, then returns None: the caller goes on without a run."""
        if run_id:
            try:
                self._client.get_run(run_id)
            except Exception as e:  # noqa: BLE001 - deleted, or another store (404): a new run below
                if _http_status(e) != 404:
                    return run_id  # unreachable: the run is there; its status follows when it finishes
            else:
                self._safe(self._client.update_run, run_id, "RUNNING")
                return run_id
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if token:
            tags[TOKEN_TAG] = token
        deadline = time.time() + (START_WAIT_S if time.time() >= getattr(self, "_down_until", 0.0) else 0)
        while True:
            try:
                c = self._client
                found = token and c.search_runs([self.experiment_id()], f"tags.{TOKEN_TAG} = '{token}'")
                if found:
                    return self.start_run(name, run_id=found[0].info.run_id)
                return c.create_run(self.experiment_id(), run_name=name, tags=tags).info.run_id
            except Exception as e:  # noqa: BLE001 - MLflow raises its own types for an HTTP answer
                if 400 <= _http_status(e) < 500:
                    raise
                if time.time() > deadline:
                    warnings.warn(f"MLflow at {self.uri} unreachable ({e}): no run for {name}", stacklevel=2)
                    self._down_until = time.time() + RETRY_AFTER_S
                    return None
                time.sleep(2.0)

    def stale_runs(self, tags: Mapping[str, str]) -> list[str]:
        """The runs still RUNNING with these tags (e.g. the parent run of a driver that was killed)."""
        where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self._safe(
            self._client.search_runs, [self.experiment_id()], f"{where} and attributes.status = 'RUNNING'"
        )
        return [] if runs is _FAILED else [r.info.run_id for r in runs]

    def _safe(self, fn, *args, **kwargs):
        for attempt in range(3):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - tracking must never kill training
                if attempt == 2:
                    if not self._warned:
                        where = f"spooled to {self.spool_dir}" if self.spool_dir else "metrics stay on disk"
                        warnings.warn(f"MLflow logging to {self.uri} failed ({e}); {where}", stacklevel=2)
                        self._warned = True
                    return _FAILED
                time.sleep(0.5 * (attempt + 1))  # sqlite "database is locked" under concurrent writers

    def log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        items = [[k, str(v)[:6000]] for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._send({"op": "log_batch", "run_id": run_id, "params": items[i : i + 100]})

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int | None = None, at: float | None = None
    ) -> None:
        """`at`: the time the figures are of (default now). The same figures logged again at the same time are
        one entry in MLflow's history, not two (how a resumed unit and a spool replay log without duplicates)."""
        ts = int((time.time() if at is None else at) * 1000)
        items = [[k.replace("/", "."), float(v), ts, step or 0] for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self._send({"op": "log_batch", "run_id": run_id, "metrics": items[i : i + 500]})

    def set_tags(self, run_id: str, tags: Mapping[str, object]) -> None:
        self._send({"op": "log_batch", "run_id": run_id, "tags": [[k, str(v)] for k, v in tags.items()]})

    def log_artifacts(
        self, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None
    ) -> None:
        for p in paths:
            p = Path(p)
            if p.is_file():
                self._send(
                    {
                        "op": "log_artifact",
                        "run_id": run_id,
                        "path": str(p.resolve()),
                        "artifact_path": artifact_path,
                    }
                )

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._send({"op": "set_terminated", "run_id": run_id, "status": status})

    # -- the spool (asc_ray.spool): what could not reach MLflow, kept under the output dir and replayed later.
    # Every record is one MLflow takes twice as once: metrics carry their time and step, the rest overwrite.
    def set_spool(self, spool_dir: str | Path) -> None:
        self.spool_dir = str(spool_dir)

    def _fail_fast(self) -> None:
        """MLflow's HTTP client retries an unreachable server 7 times with exponential back-off (~4 minutes
        per call) - a worker would stall its training that long per metric. With a spool, failing within
        seconds loses nothing. Explicit settings of these variables win."""
        if self.spool_dir:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

    def _do(self, rec: dict) -> None:
        """One spool record against the store (raises on failure)."""
        from mlflow.entities import Metric, Param, RunTag

        c, op, rid = self._client, rec["op"], rec["run_id"]
        if op == "log_batch":
            c.log_batch(
                rid,
                metrics=[Metric(*m) for m in rec.get("metrics", [])],
                params=[Param(*p) for p in rec.get("params", [])],
                tags=[RunTag(*t) for t in rec.get("tags", [])],
            )
        elif op == "log_artifact":
            if Path(rec["path"]).is_file():  # removed since (e.g. --fresh): nothing left to upload
                c.log_artifact(rid, rec["path"], rec["artifact_path"])
        elif op == "set_terminated":
            c.set_terminated(rid, rec["status"])
        else:
            raise ValueError(f"unknown spool record {op!r}")

    def _send(self, rec: dict) -> None:
        spool = Spool(self.spool_dir) if self.spool_dir else None
        if spool and time.time() < getattr(self, "_down_until", 0.0):
            spool.append([rec])  # failed moments ago: don't stall training on another round of retries
            return
        if spool and spool.own_file().is_file():
            self.replay_spool(own_only=True)  # the server may be back: older records first
        if self._safe(self._do, rec) is _FAILED and spool:
            spool.append([rec])
            self._down_until = time.time() + RETRY_AFTER_S

    def replay_spool(self, own_only: bool = False, orphans: bool = False) -> tuple[int, int]:
        """Send the spooled records to MLflow (asc_ray.spool.Spool.replay); (sent, still spooled)."""
        if not self.spool_dir:
            return 0, 0
        refused = lambda e: 400 <= _http_status(e) < 500  # noqa: E731 - e.g. its run was deleted
        sent, left = Spool(self.spool_dir).replay(self._do, refused, own_only, orphans)
        if left:
            self._down_until = time.time() + RETRY_AFTER_S
        return sent, left


_FAILED = object()
RETRY_AFTER_S = 30.0  # after a failed call, spool straight away for this long before trying the server again
# how long a new run waits for an unreachable server (a restart) before going without one
START_WAIT_S = 120.0
TOKEN_TAG = "run_token"


def _http_status(e: Exception) -> int:
    """The HTTP status of an MLflow error (500 when the server could not be reached)."""
    return getattr(e, "get_http_status_code", lambda: 500)()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m asc_ray.tracking",
        description="Send MLflow calls spooled during a tracking server outage (safe to run again).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay", help="replay OUTPUT_DIR/mlflow_spool to the tracking store")
    r.add_argument("output_dir")
    r.add_argument("--tracking-uri", default=None, help=URI_HELP)
    a = p.parse_args(argv)
    spool = Path(a.output_dir) / SPOOL_DIR
    uri = open_store(a.tracking_uri, a.output_dir).uri
    t = Tracker(uri)
    t.set_spool(spool)
    with OutputLock(
        a.output_dir
    ):  # no run writes the spool meanwhile: leftovers of dead replays are safe too
        sent, left = t.replay_spool(orphans=True)
    print(f"replayed {sent} spooled MLflow call(s) from {spool} to {uri}; {left} still spooled")
    return 1 if left else 0


if __name__ == "__main__":
    run_cli(main)
