"""The trained students as MLflow models: one a person can load, serve and find by name.

- `log_unit_model(tracker, run_id, unit_dir)` (after a student finishes): the run's `model/` artifact is an
  MLflow pyfunc model. Input: raw mono waveforms at the model's sample rate (a float32 array [batch,
  samples], any length: longer clips are averaged over 1-s windows, shorter ones padded, as
  `asc-ray-predict` does). Output: the 10 scene probabilities, one column per scene. Inside: the fp16
  weights as deployed, `unit.json`, and the `asc_ray` package as code_paths, so loading needs torch and
  torchaudio but not the asc-ray that trained it (and a later asc-ray cannot change what the model does).
  `mlflow.pyfunc.load_model("runs:/<id>/model")` and `mlflow models serve -m runs:/<id>/model
  --env-manager local` work on it.
- `register_students(tracker, parent_run_id, results, folder_of)` (after the evaluate stage): each student of
  the pipeline run is a version of the registered model `asc-ray-<system>-split<N>` (test macro accuracy in
  the version's description and tags). A version is keyed by the unit's key: a re-run that retrained nothing
  adds none, and registers what an earlier run could not (a student left out is an error, NOT_REGISTERED).
  It also leaves the MLflow UI opening on what a person came for (see `students_view`) and a results table on
  the parent run that the UI renders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

try:  # the pyfunc base class; without mlflow this module still imports (the predict CLI needs no MLflow)
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object

from asc_ray.errors import AGAIN, AscRayError
from asc_ray.layout import UnitFiles, UnitRef, registered_name
from asc_ray.mlflow_store import STORE_URIS, find_model
from asc_ray.predict.classifier import UNIT_SPEC, Classifier, read_unit_spec

ARTIFACT_PATH = "model"  # runs:/<run id>/model
CHECKPOINT_PATH = "checkpoint"  # the fp32 model.pt beside it, as before
EXAMPLE_SECONDS = 0.25  # the input example: short (padded to 1 s by the model) to keep the artifact small
SHARE_TAG = "mlflow.sharedViewState."  # the MLflow UI's shared view: URL ?viewStateShareKey=<key>
# MLflow 3.17's UI takes the experiment kind from a global GenAI / "Model training" switch (remembered in
# the browser) when it has one, and from the experiment tag (asc_ray.tracking) otherwise: links set both
UI_WORKFLOW = "workflowType=machine_learning"
REQUIREMENTS = ("mlflow", "torch", "torchaudio", "numpy", "scipy", "pandas", "pyyaml", "tqdm", "soundfile")


@contextlib.contextmanager
def _quiet(logger: str):
    lg = logging.getLogger(logger)
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


# ------------------------------------------------------------------------------------- the pyfunc model
class AscRayModel(PythonModel):
    """pyfunc wrapper around asc_ray.predict.classifier.Classifier: waveforms [B, n] at the model's rate -> probabilities."""

    # the signature (_signature) describes the input, not type hints: MLflow's switch to not look for them
    _skip_type_hint_validation = True

    def load_context(self, context):
        spec = json.loads(Path(context.artifacts["unit"]).read_text())
        self.clf = Classifier.from_weights(spec, context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        waves = _as_waves(model_input)
        return pd.DataFrame(self.clf.probabilities(waves), columns=list(self.clf.spec["classes"]))


def _as_waves(model_input) -> list[np.ndarray]:
    """ndarray [B, n] / [n], a list of arrays (any lengths), or a DataFrame with one row per clip."""
    if hasattr(model_input, "to_numpy"):  # pandas
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):  # a named tensor
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        arr = model_input.astype(np.float32)
        return [arr] if arr.ndim == 1 else list(arr.reshape(len(arr), -1))
    return [np.asarray(w, dtype=np.float32).reshape(-1) for w in model_input]


def _signature(spec: dict):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
        outputs=Schema([ColSpec("double", c) for c in spec["classes"]]),
    )


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def save_unit_model(unit_dir: str | Path, dest: str | Path) -> Path:
    """The MLflow pyfunc model of a student's unit folder (model_fp16.pt + unit.json), saved at dest."""
    import mlflow.pyfunc

    unit_dir = Path(unit_dir)
    spec = read_unit_spec(unit_dir)
    weights = UnitFiles(unit_dir).model_fp16
    if not weights.is_file():
        raise AscRayError(
            "no model_fp16.pt in the unit folder (only students are exported at fp16)",
            path=unit_dir,
            fix="pass a student's unit folder; re-run the students stage if it is missing",
        )
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / UNIT_SPEC
        spec_file.write_text(json.dumps(spec, indent=1))
        # the package as code_paths, without bytecode caches
        code = Path(tmp) / "asc_ray"
        shutil.copytree(
            Path(__file__).parents[1], code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        example = (
            np.random.default_rng(0).standard_normal((1, round(EXAMPLE_SECONDS * spec["sample_rate"]))) * 0.1
        ).astype(np.float32)
        with warnings.catch_warnings(), _quiet("mlflow"):
            # "add type hints to predict" (the signature below says it) and "python_model is pickled"
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.save_model(
                str(dest),
                python_model=AscRayModel(),
                artifacts={"weights": str(weights), "unit": str(spec_file)},
                code_paths=[str(code)],
                signature=_signature(spec),
                input_example=example,
                pip_requirements=_requirements(),
                metadata={"asc_ray": {k: spec[k] for k in ("system", "model", "sample_rate", "classes")}},
            )
    return Path(dest)


def log_unit_model(tracker, run_id: str, unit_dir: str | Path) -> None:
    """Log a finished student's MLflow model (model/) and fp32 checkpoint (checkpoint/) to its run.
    Tracking trouble is a warning (the files stay in the unit folder), as for every other artifact."""
    unit_dir, files = Path(unit_dir), UnitFiles(unit_dir)
    if not files.model_fp16.is_file():  # a teacher: its weights as a plain file, as before
        tracker.log_artifacts(run_id, [files.model], ARTIFACT_PATH)
        return
    tracker.log_artifacts(run_id, [files.model], CHECKPOINT_PATH)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = save_unit_model(unit_dir, Path(tmp) / ARTIFACT_PATH)
            tracker._safe(tracker._client.log_artifacts, run_id, str(local), ARTIFACT_PATH)
    except Exception as e:  # noqa: BLE001 - never lose a trained student over its MLflow copy
        warnings.warn(
            f"could not log the MLflow model of {unit_dir} ({e}); register_students logs it later",
            stacklevel=2,
        )


def _has_model(client, run_id: str) -> bool:
    try:
        return any(a.path == f"{ARTIFACT_PATH}/MLmodel" for a in client.list_artifacts(run_id, ARTIFACT_PATH))
    except Exception:  # noqa: BLE001 - a deleted run
        return False


def _description(r: Mapping) -> str:
    return (
        f"{r['system']} on split {r['split']} %: test macro accuracy {100 * r['test_macro_acc']:.2f} % "
        f"(selected on validation: epoch {r.get('selected_epoch')}, val macro accuracy "
        f"{100 * float(r.get('val_macro_acc', float('nan'))):.2f} %), {int(r['params']):,} params, "
        f"{int(r['macs']) / 1e6:.1f} M MACs. Input: mono waveforms at the model's sample rate; output: the "
        "10 scene probabilities."
    )


def register_student(client, result: Mapping, unit_dir: str | Path | None = None):
    """A version of asc-ray-<system>-split<N> for one student result (dict of result.json + key + run_id),
    or the existing one when a version of the same unit key is there. Returns the ModelVersion or None.
    `unit_dir`: the student's folder, to log its MLflow model from when its run has none."""
    run_id, key = result.get("run_id"), result.get("key")
    if not run_id or not key:
        return None
    name = registered_name(result["system"], result["split"])
    if client.search_registered_models(f"name = '{name}'", max_results=1) == []:
        try:
            client.create_registered_model(
                name,
                tags={"system": result["system"], "split": str(result["split"])},
                description=f"asc-ray {result['system']} students trained on split {result['split']} %",
            )
        except Exception:  # noqa: BLE001 - created concurrently
            pass
    for v in client.search_model_versions(f"name = '{name}'"):
        if v.tags.get("key") == key:
            return v  # the same trained model: no new version
    if not _has_model(client, run_id) and unit_dir is not None:
        # its unit could not log it (trained before models were logged, or MLflow failed then): log it now
        with tempfile.TemporaryDirectory() as tmp:
            model = save_unit_model(unit_dir, Path(tmp) / ARTIFACT_PATH)
            client.log_artifacts(run_id, str(model), ARTIFACT_PATH)
    acc = float(result["test_macro_acc"])
    tags = {
        "test_macro_acc": f"{acc:.4f}",
        "val_macro_acc": f"{float(result.get('val_macro_acc', float('nan'))):.4f}",
        "system": result["system"],
        "split": str(result["split"]),
        "key": key,
        **({"seed": str(result["seed"])} if result.get("seed") is not None else {}),
        "params": str(result.get("params", "")),
        "macs": str(result.get("macs", "")),
    }
    # the run's own artifact location, from this client's store (resolving runs:/ would ask the process's
    # default tracking URI, which need not be the store the pipeline logs to)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    return client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=_description(result), await_creation_for=0
    )


# ------------------------------------------------------------------------------------------- aliases
# The registry's aliases, as MLflow's docs use them: @challenger is the version just trained; @champion is the one
# to serve. The champion moves to a new version only where the validation holdout shows it better (never test:
# a model picked on test would have its test figure biased), or when a person promotes it.
CHALLENGER, CHAMPION = "challenger", "champion"


def _val(version) -> float:
    try:
        return float(version.tags.get("val_macro_acc", "nan"))
    except ValueError:
        return float("nan")


def set_aliases(client, version) -> str:
    """@challenger on `version`; @champion too where it has none yet or `version` is better on validation.
    Returns what happened to @champion, in words."""
    name = version.name
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MLflow raises when the alias is not set
        champion = None
    if champion is not None and champion.version == version.version:
        return f"@{CHAMPION} is this version"
    new, old = _val(version), (_val(champion) if champion is not None else float("nan"))
    if champion is None or new > old:  # NaN (no holdout) is never better
        client.set_registered_model_alias(name, CHAMPION, version.version)
        why = "the first version" if champion is None else f"val {100 * new:.2f} % > {100 * old:.2f} %"
        return f"@{CHAMPION} moved here ({why})"
    why = (
        "no validation holdout to compare on" if new != new else f"val {100 * new:.2f} % <= {100 * old:.2f} %"
    )
    return (
        f"@{CHAMPION} stays on version {champion.version} ({why}; asc-ray promote {name} {version.version})"
    )


def promote_version(tracking_uri: str, name: str, version: str, alias: str = CHAMPION) -> str:
    """Point `alias` of the registered model `name` at `version` (a number, or an alias such as challenger)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    fix = f"list its versions in the MLflow UI (Models) or with `mlflow models` against {tracking_uri}"
    try:
        v = (
            client.get_model_version(name, version)
            if version.isdigit()
            else client.get_model_version_by_alias(name, version)
        )
    except Exception as e:  # noqa: BLE001 - unknown model, version or alias
        raise AscRayError(
            f"no version '{version}' of registered model '{name}': {str(e).splitlines()[0][:200]}",
            path=tracking_uri,
            fix=fix,
        ) from None
    client.set_registered_model_alias(name, alias, v.version)
    return str(v.version)


# --------------------------------------------------------------------------------------------- the UI
def students_view(parent_run_id: str, split: int | str) -> dict:
    """The runs page state of the MLflow UI (keys of its URL search params and UI state) that lists the
    students of one split of a pipeline run, best first, with their test accuracy as a column."""

    def col(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"  # the UI's canonical column key

    return {
        "searchFilter": f"tags.role = 'student' and tags.split = '{split}' "
        f"and tags.mlflow.parentRunId = '{parent_run_id}'",
        "orderByKey": col("metrics", "test_macro_acc"),
        "orderByAsc": False,
        "selectedColumns": [
            col("tags", "system"),
            col("tags", "split"),
            col("metrics", "test_macro_acc"),
            col("metrics", "val_macro_acc"),
            col("metrics", "params"),
            col("metrics", "macs"),
        ],
    }


def ui_base_url(tracking_uri: str) -> str:
    """Where a person opens the UI: the tracking server itself, else what `mlflow ui` serves."""
    return (
        tracking_uri.rstrip("/")
        if tracking_uri.startswith(("http://", "https://"))
        else "http://127.0.0.1:5000"
    )


def share_students_view(client, experiment_id: str, parent_run_id: str, split: int | str, base: str) -> str:
    """Store the students view of a split as an experiment tag (what the UI's Share button does) and
    return the link that opens it. The key names the split, so the link always shows the latest run."""
    key = f"asc-ray-students-split{split}"
    client.set_experiment_tag(experiment_id, SHARE_TAG + key, json.dumps(students_view(parent_run_id, split)))
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW}&viewStateShareKey={key}"


# the error a run ends with when students it trained are not in the registry (a re-run registers them)
NOT_REGISTERED = "{n} trained student(s) not in the MLflow model registry: {names}"
REGISTER_TRIES = 3  # per student, a few seconds apart (a SQLite store locked by another writer, a blip)


def _registered(fn: Callable[[], object]):  # fn(), tried REGISTER_TRIES times
    for attempt in range(REGISTER_TRIES):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - MLflow raises its own types; the last one is reported
            if attempt == REGISTER_TRIES - 1:
                raise
            time.sleep(2.0 * (attempt + 1))


def register_students(
    tracker,
    parent_run_id: str,
    results: Iterable[Mapping | None],
    folder_of: Callable[[Mapping], Path] | None = None,
    log=print,
) -> dict[str, str]:
    """After the evaluate stage: register every student of `results` (result records of units), log
    the results table to the parent run, and store one UI view per split. Returns {split: link}.
    `folder_of(record)`: a student's unit folder (its MLflow model is logged from there when its run has none).
    A student not registered after REGISTER_TRIES raises AscRayError (NOT_REGISTERED) once the others are done;
    trouble with aliases, the results table or the UI views is a warning (the registry has every student)."""
    students = [r for r in results if r and r.get("role") == "student"]
    if tracker is None or not parent_run_id or not students:
        return {}
    client = tracker._client
    links: dict[str, str] = {}
    by_model: dict[str, list] = {}
    failed: dict[str, str] = {}  # the student's name -> why
    for r in sorted(students, key=lambda r: (int(r["split"]), r["system"], r.get("seed") or 0)):
        seed = "" if r.get("seed") is None else f", seed {r['seed']}"
        name = UnitRef(r["system"], r["split"], r.get("seed")).name
        try:
            v = _registered(lambda r=r: register_student(client, r, folder_of(r) if folder_of else None))
        except Exception as e:  # noqa: BLE001 - reported below, after the other students
            failed[name] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            log(f"MLflow model: {name} not registered ({failed[name]})")
            continue
        if v is not None:
            by_model.setdefault(v.name, []).append(v)
            log(
                f"MLflow model: models:/{v.name}/{v.version} ({100 * float(r['test_macro_acc']):.2f} %{seed})"
            )
    for name, versions in by_model.items():
        # one challenger per model and run: the seed best on validation (the first without a holdout)
        best = max(versions, key=lambda v: (_val(v) if _val(v) == _val(v) else -1.0, -versions.index(v)))
        try:
            said = _registered(lambda best=best: set_aliases(client, best))
        except Exception as e:  # noqa: BLE001 - the versions are registered; `asc-ray promote` sets an alias
            warnings.warn(f"MLflow aliases of {name} at {tracker.uri} not set ({e})", stacklevel=2)
            continue
        log(f"MLflow model: models:/{name}@{CHALLENGER} = version {best.version}; {said}")
    try:
        table = {
            c: [
                r[c] if c in ("system", "split") else round(100 * float(r[c]), 2)
                for r in sorted(students, key=lambda r: (int(r["split"]), r["system"]))
            ]
            for c in ("system", "split", "test_macro_acc", "val_macro_acc")
        }
        table["registered_model"] = [
            registered_name(s, sp) for s, sp in zip(table["system"], table["split"], strict=True)
        ]
        client.log_table(parent_run_id, data=table, artifact_file="results_table.json")
        exp = client.get_run(parent_run_id).info.experiment_id
        for split in sorted({int(r["split"]) for r in students}):
            links[str(split)] = share_students_view(
                client, exp, parent_run_id, split, ui_base_url(tracker.uri)
            )
            log(f"MLflow UI, students of split {split}: {links[str(split)]}")
    except Exception as e:  # noqa: BLE001 - a table or a view: the registry is complete without them
        warnings.warn(f"MLflow results table / UI views at {tracker.uri} failed ({e})", stacklevel=2)
    if failed:
        raise AscRayError(
            NOT_REGISTERED.format(n=len(failed), names="; ".join(f"{k} ({v})" for k, v in failed.items())),
            path=tracker.uri,
            fix=f"every other output is written: once MLflow answers, {AGAIN} (it reuses "
            "every unit and registers the students that are missing)",
        )
    return links


# ---------------------------------------------------------------------------------- loading for predict
def load_classifier_from_mlflow(uri: str, device: str | None = None, tracking_uri: str | None = None):
    """The Classifier inside an MLflow model of asc-ray (runs:/, models:/, a local model folder); `tracking_uri`:
    the store a runs:/ or models:/ URI is looked up in (default: MLflow's own, $MLFLOW_TRACKING_URI)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own output stays readable
    source = uri
    if tracking_uri and uri.startswith(STORE_URIS):  # one clear error naming the store and what it holds
        source = find_model(tracking_uri, uri)[1]
    try:
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri))
    except Exception as e:  # noqa: BLE001 - unknown run / model / version, unreachable server
        raise AscRayError(
            f"cannot fetch the MLflow model: {str(e).splitlines()[0][:200]}",
            path=uri,
            fix=f"check the URI (runs:/<run id>/model, models:/{registered_name('<system>', '<N>')}/<version>) "
            "and MLFLOW_TRACKING_URI (the store the pipeline logged to)",
        ) from None
    spec_file, weights = local / "artifacts" / "unit.json", local / "artifacts" / "model_fp16.pt"
    if not spec_file.is_file() or not weights.is_file():
        raise AscRayError(
            "not an asc-ray MLflow model (no artifacts/unit.json + model_fp16.pt)",
            path=uri,
            fix="pass the model/ of an asc-ray student run or a registered "
            f"{registered_name('<system>', '<N>')} version",
        )
    spec = json.loads(spec_file.read_text())
    return Classifier.from_weights(spec, weights, device)
