"""A trained student as an MLflow model, for real: logged to a SQLite store, loaded with mlflow.pyfunc in a
fresh process, served with `mlflow models serve --env-manager local` and asked over HTTP, registered by
name; every answer must equal asc-ray-predict's."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.procs import free_port, run_py
from helpers.serving import env_with_venv_bin, read_probs, running

from asc_ray.console import run_cli
from asc_ray.predict import main, read_audio
from asc_ray.predict.mlflow_model import ARTIFACT_PATH, register_students
from asc_ray.tracking import Tracker, default_artifact_location

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SR = 32000


@pytest.fixture(scope="module")
def logged(student_unit, synth_dataset, tmp_path_factory):
    """A store with a pipeline-like parent run and the student's run, its model logged by the unit hook."""
    from asc_ray.predict.mlflow_model import log_unit_model

    root = tmp_path_factory.mktemp("mlflow_model")
    uri = f"sqlite:///{root}/mlflow.db"
    t = Tracker(uri, "asc-ray", default_artifact_location(uri, "asc-ray", root))  # (as the pipeline makes it)
    parent = t.start_run("pipeline", {"role": "pipeline"})
    run_id = t.start_run("baseline split100", {"role": "student", "system": "baseline", "split": 100}, parent)
    log_unit_model(t, run_id, student_unit)
    result = json.loads((student_unit / "result.json").read_text())
    t.log_metrics(run_id, {"test_macro_acc": result["test_macro_acc"]})
    t.finish(run_id)
    # the waveforms everybody classifies: test clips at the model's rate, and a 1.5-s one
    from asc_ray.data.tau import TauDataset

    files = TauDataset.open(synth_dataset).test_files()[:4]
    waves = [read_audio(synth_dataset / f, SR) for f in files]
    waves.append(np.concatenate([waves[0], waves[1][: SR // 2]]))
    wav_dir = root / "wavs"
    wav_dir.mkdir()
    for i, w in enumerate(waves):
        sf.write(wav_dir / f"w{i}.wav", w, SR, subtype="FLOAT")
    return {
        "uri": uri,
        "tracker": t,
        "parent": parent,
        "run_id": run_id,
        "result": result,
        "root": root,
        "waves": waves,
        "wav_dir": wav_dir,
    }


def _predict(logged, model_uri, capsys, monkeypatch) -> np.ndarray:
    """asc_ray.predict on the test's WAV files with `model_uri` (the CLI, in this process)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    mlflow.set_tracking_uri(logged["uri"])
    out = logged["root"] / "pred.csv"
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main([model_uri, str(logged["wav_dir"]), "--out", str(out)]))
    assert e.value.code == 0, capsys.readouterr().err
    p = read_probs(out)
    return np.stack([p[str(logged["wav_dir"] / f"w{i}.wav")] for i in range(len(logged["waves"]))])


def test_logged_model_has_fp16_weights_signature_example_and_its_code(logged):
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=logged["uri"])
    local = c.download_artifacts(logged["run_id"], ARTIFACT_PATH, str(logged["root"] / "dl"))
    m = Model.load(local)
    assert list(m.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, -1]
    assert [c["name"] for c in m.signature.outputs.to_dict()][:2] == ["airport", "bus"]
    assert m.saved_input_example_info is not None
    state = torch.load(f"{local}/artifacts/model_fp16.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert os.path.isfile(f"{local}/code/asc_ray/predict/classifier.py")  # its own copy of the code
    assert json.loads(open(f"{local}/artifacts/unit.json").read())["sample_rate"] == SR
    arts = {a.path for a in c.list_artifacts(logged["run_id"], "checkpoint")}
    assert "checkpoint/model.pt" in arts  # the fp32 weights stay beside it


def test_pyfunc_in_a_fresh_process_uses_its_own_code_and_matches_predict(logged, capsys, monkeypatch):
    expected = _predict(logged, f"runs:/{logged['run_id']}/model", capsys, monkeypatch)
    np.save(logged["root"] / "x.npy", np.stack(logged["waves"][:4]))
    code = (
        "import sys, json, numpy as np, mlflow\n"
        f"m = mlflow.pyfunc.load_model('runs:/{logged['run_id']}/model')\n"
        f"p = m.predict(np.load('{logged['root']}/x.npy'))\n"
        "import asc_ray\n"
        "print(json.dumps({'file': asc_ray.__file__, 'cols': list(p.columns), 'p': p.to_numpy().tolist()}))\n"
    )
    env = env_with_venv_bin(logged["root"], logged["uri"])
    r = run_py(["-c", code], env, logged["root"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert "/code/asc_ray/" in got["file"]  # the model's copy of asc_ray, not the installed package
    assert got["cols"][0] == "airport" and len(got["cols"]) == 10
    np.testing.assert_allclose(np.array(got["p"]), expected[:4], atol=1e-6)


def test_served_model_answers_http_with_the_same_probabilities(logged, tmp_path, capsys, monkeypatch):
    expected = _predict(logged, f"runs:/{logged['run_id']}/model", capsys, monkeypatch)
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{logged['run_id']}/model"]
    cmd += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    env = env_with_venv_bin(tmp_path, logged["uri"])
    with running(cmd, env, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log"):
        answers = []
        for batch in (logged["waves"][:4], [logged["waves"][4]]):  # equal lengths per request
            body = json.dumps({"inputs": np.stack(batch).tolist()}).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=120) as resp:
                preds = json.loads(resp.read())["predictions"]
            answers += [[row[c] for c in preds[0]] for row in preds]
            assert list(preds[0])[0] == "airport"
    np.testing.assert_allclose(np.array(answers), expected, atol=1e-6)


def test_registry_one_version_per_trained_student_and_loadable_by_name(logged, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    r = {**logged["result"], "key": "unit-key-1", "run_id": logged["run_id"]}
    t, c = logged["tracker"], MlflowClient(tracking_uri=logged["uri"])
    links = register_students(t, logged["parent"], [r, None], log=lambda m: None)
    register_students(t, logged["parent"], [r], log=lambda m: None)  # a re-run that retrained nothing
    versions = c.search_model_versions("name = 'asc-ray-baseline-split100'")
    assert len(versions) == 1
    v = versions[0]
    assert v.tags["test_macro_acc"] == f"{r['test_macro_acc']:.4f}" and v.tags["key"] == "unit-key-1"
    assert f"{100 * r['test_macro_acc']:.2f} %" in v.description  # its figure, readable in the registry
    # the same model by name as by run
    by_name = _predict(logged, f"models:/asc-ray-baseline-split100/{v.version}", capsys, monkeypatch)
    by_run = _predict(logged, f"runs:/{logged['run_id']}/model", capsys, monkeypatch)
    np.testing.assert_allclose(by_name, by_run, atol=0)
    # a retrained student (new key) is a new version
    register_students(t, logged["parent"], [{**r, "key": "unit-key-2"}], log=lambda m: None)
    assert len(c.search_model_versions("name = 'asc-ray-baseline-split100'")) == 2
    # the UI: experiment kind, a shared view per split, the results table on the parent run
    exp = c.get_experiment_by_name("asc-ray")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.asc-ray-students-split100"])
    assert logged["parent"] in view["searchFilter"] and "metrics.`test_macro_acc`" in view["selectedColumns"]
    assert links == {
        "100": f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?"
        "workflowType=machine_learning&viewStateShareKey=asc-ray-students-split100"
    }
    assert "results_table.json" in {a.path for a in c.list_artifacts(logged["parent"])}
