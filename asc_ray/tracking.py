"""MLflow logging with the plain MlflowClient: one parent run per pipeline invocation, one child run per
teacher and per student (tag `mlflow.parentRunId`), tags role / system / split / augment.

Workers log their own per-epoch metrics with the tracking URI the driver resolved (absolute, so every
process and node writes to the same store). A tracking hiccup in a worker is a warning, never a lost
model: the numbers are also on disk under the output dir.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from asc_ray.errors import AscRayError

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow 3's own default: `mlflow ui` in the working directory shows it


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else MLflow's default; relative sqlite/file paths made absolute."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    elif "://" not in uri:  # a bare folder: legacy file store
        uri = Path(uri).resolve().as_uri()
    return uri


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail at start-up, before any training, when the tracking store cannot be reached."""
    fix = (
        "start the server (e.g. scripts/mlflow_server.sh), fix MLFLOW_TRACKING_URI / mlflow.tracking_uri, "
        "or unset it to log to ./mlflow.db"
    )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise AscRayError(f"MLflow tracking server answered {r.status}", path=uri, fix=fix)
        except (urllib.error.URLError, OSError) as e:
            raise AscRayError(
                f"MLflow tracking server unreachable: {getattr(e, 'reason', e)}", path=uri, fix=fix
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise AscRayError("MLflow SQLite store's folder is missing or not writable", path=folder, fix=fix)
    Tracker(uri, "asc-ray-check")._client.search_experiments(max_results=1)


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

    def __init__(self, uri: str, experiment: str = "asc-ray"):
        self.uri = uri
        self.experiment = experiment
        self._experiment_id: str | None = None
        self._warned = False

    def __getstate__(self):
        return {
            "uri": self.uri,
            "experiment": self.experiment,
            "_experiment_id": self._experiment_id,
            "_warned": False,
        }

    @property
    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            c = self._client
            exp = c.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._experiment_id = c.create_experiment(self.experiment)
                except Exception:  # noqa: BLE001 - created concurrently by another process
                    self._experiment_id = c.get_experiment_by_name(self.experiment).experiment_id
            else:
                self._experiment_id = exp.experiment_id
            if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                mark_model_training(c, self._experiment_id)
        return self._experiment_id

    def start_run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """A new run (child when parent_id is given), or the existing `run_id` reopened (resume)."""
        c = self._client
        if run_id:
            try:
                c.get_run(run_id)
                c.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:  # noqa: BLE001 - run deleted or another store: start a new one
                pass
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        return c.create_run(self.experiment_id(), run_name=name, tags=tags).info.run_id

    def _safe(self, fn, *args, **kwargs):
        for attempt in range(3):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - tracking must never kill training
                if attempt == 2:
                    if not self._warned:
                        warnings.warn(
                            f"MLflow logging to {self.uri} failed ({e}); metrics stay on disk", stacklevel=2
                        )
                        self._warned = True
                    return None
                time.sleep(0.5 * (attempt + 1))  # sqlite "database is locked" under concurrent writers

    def log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._safe(self._client.log_batch, run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k.replace("/", "."), float(v), ts, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self._safe(self._client.log_batch, run_id, metrics=items[i : i + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag

        self._safe(self._client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(
        self, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None
    ) -> None:
        for p in paths:
            p = Path(p)
            if p.is_file():
                self._safe(self._client.log_artifact, run_id, str(p), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._safe(self._client.set_terminated, run_id, status)
