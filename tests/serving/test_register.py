"""The end of a pipeline run registers every student it trained (asc_ray.pipeline.results.report_to_mlflow):
a student whose run has no MLflow model yet (its unit could not log it: MLflow failed then, or its Tune trial
was killed and retried) gets it from its own unit folder, `<out>/students/split<N>/<system>/seed<s>/`; a student
that cannot be registered is an error the run reports after registering the others, never a warning."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from helpers.console import said

from asc_ray.errors import AGAIN, AscRayError
from asc_ray.layout import Layout, UnitRef
from asc_ray.pipeline.results import report_to_mlflow
from asc_ray.predict.mlflow_model import NOT_REGISTERED, registered_name
from asc_ray.tracking import Tracker, default_artifact_location


@pytest.fixture
def run(student_unit, tmp_path):
    """A pipeline's output dir with the trained student as seed 0 and seed 1 of `baseline split100`, each with
    an MLflow run that has no model logged, and the pipeline's parent run."""
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(uri, "asc-ray", default_artifact_location(uri, "asc-ray", out))
    parent = t.start_run("pipeline", {"role": "pipeline"})
    records = {}
    for seed in (0, 1):
        folder = Layout(out).unit_dir(UnitRef("baseline", 100, seed))
        shutil.copytree(student_unit, folder)
        run_id = t.start_run(f"baseline split100 seed{seed}", {"role": "student"}, parent)
        rec = json.loads((folder / "result.json").read_text())
        records[seed] = {**rec, "seed": seed, "key": f"key-seed{seed}", "run_id": run_id}
    return {"out": out, "uri": uri, "tracker": t, "parent": parent, "records": records}


def _report(run):
    """What the pipeline does last: the students as registered models (split 100's seeds 0 and 1)."""
    rows = [{"system": "baseline", "split": 100, "seed": s, "test_macro_acc": 50.0} for s in run["records"]]
    report_to_mlflow(run["tracker"], run["parent"], run["out"], rows, [], lambda u: run["records"][u.seed])


def _versions(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).search_model_versions(f"name = '{registered_name('baseline', 100)}'")


def test_a_student_without_a_logged_model_is_registered_from_its_seed_folder(run):
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # registry trouble is never only a warning
        _report(run)
    versions = _versions(run["uri"])
    assert sorted(v.tags["seed"] for v in versions) == ["0", "1"]
    for v in versions:
        files = {a.path for a in MlflowClient(run["uri"]).list_artifacts(v.run_id, "model")}
        assert "model/MLmodel" in files, files  # logged from the unit's own folder


def test_a_student_that_cannot_be_registered_fails_the_run_after_the_others(run):
    shutil.rmtree(
        Layout(run["out"]).unit_dir(UnitRef("baseline", 100, 1))
    )  # its model can no longer be logged
    with pytest.raises(AscRayError) as e:
        _report(run)
    m = said(NOT_REGISTERED, e.value.problem)
    assert m and m["n"] == "1" and m["names"].startswith("baseline split100 seed1 ("), e.value.problem
    assert AGAIN in e.value.fix
    assert [v.tags["seed"] for v in _versions(run["uri"])] == ["0"]  # the other one is registered
