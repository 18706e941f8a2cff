"""The whole pipeline, for real: the session's reference run (helpers.reference: jobs/full_pipeline.py on
synthetic data with a local Ray runtime and a SQLite MLflow store, splits 10 and 100, every teacher and student);
then the same command again on a copy of it, which must reuse every unit and give the same results."""

import csv
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.console import STAMP, said, said_all
from helpers.procs import ROOT
from helpers.reference import SPLITS

from asc_ray.data.logits import read_logits, table_metadata
from asc_ray.data.tau import TauDataset
from asc_ray.layout import Layout, PretrainRef, UnitRef, registered_name
from asc_ray.metrics import evaluate
from asc_ray.pipeline.graph import DONE, PROGRESS, START, TO_RUN
from asc_ray.pipeline.run import RESULTS
from asc_ray.pipeline.watch import RANK_LINE
from asc_ray.systems import TEACHERS

STUDENTS = ("kd_ensemble", "tfs", "bcbl24", "baseline", "no_kd")  # the smoke profile's five
# + a teachers table and a kd_ensemble table per split, + the PaSST pretraining once per run
UNITS = len(SPLITS) * (len(TEACHERS) + len(STUDENTS) + 2) + 1
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _results(path):
    with open(path) as f:
        return {(r["system"], int(r["split"])): r for r in csv.DictReader(f)}


def test_teacher_logits_tables_cover_each_split_by_filename(reference):
    ds = TauDataset.open(reference.data)
    for split in SPLITS:
        path = reference.out / "logits" / f"teachers_split{split}.parquet"
        table = pq.read_table(path)
        assert table.column_names == ["filename", "scene_label", "device", *TEACHERS, "logits"]
        files = ds.split_files(split)
        assert sorted(table.column("filename").to_pylist()) == sorted(files)
        per_teacher = np.stack([read_logits(path, files, column=t) for t in TEACHERS])
        np.testing.assert_allclose(read_logits(path, files), per_teacher.mean(axis=0), rtol=1e-5, atol=1e-5)
        assert np.ptp(per_teacher, axis=0).max() > 0  # six different models, not one copied
        meta = table_metadata(path)
        assert set(meta["runs"]) == set(TEACHERS) and all(meta["runs"].values())
        kd = reference.out / "logits" / f"kd_ensemble_seed0_split{split}.parquet"  # the student's, per seed
        assert read_logits(kd, files).shape == (len(files), 10)


def test_results_table_has_every_student_and_split(reference):
    rows = _results(reference.out / "results.csv")
    assert set(rows) == {(s, sp) for s in STUDENTS for sp in SPLITS}
    for r in rows.values():
        assert 0.0 <= float(r["test_macro_acc"]) <= 100.0
        assert int(r["params"]) <= 64_000 and int(r["macs"]) <= 30_000_000
    md = (reference.out / "results.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| split"))
    assert all(f"| {s} " in header for s in STUDENTS), header  # a column per student, a row per split
    assert "smoke" in md.splitlines()[0] and str(reference.data) in md  # what was run, on what
    with (reference.out / "teachers.csv").open() as f:
        teachers = list(csv.DictReader(f))
    # a row `teachers` per split: the ensemble the students learn from, scored on test from its teachers' logits
    ensemble = {int(t["split"]): t for t in teachers if t["system"] == "teachers"}
    teachers = [t for t in teachers if t["system"] != "teachers"]
    assert len({t["train_seed"] for t in teachers}) == len(teachers) == len(TEACHERS) * len(SPLITS)
    assert set(ensemble) == set(SPLITS) and "| teachers |" in (reference.out / "teachers.md").read_text()
    ds = TauDataset.open(reference.data)
    test = ds.test_files()
    for sp, row in ensemble.items():
        folder = reference.out / "teachers" / f"split{sp}"
        mean = np.mean([np.load(folder / t / "test_logits.npy") for t in TEACHERS], axis=0)
        want = evaluate(mean, ds.labels(test), ds.devices(test)).metrics["macro_acc"]
        assert float(row["test_macro_acc"]) == round(100 * want, 2)
    assert {t["input_shape"] for t in teachers if t["system"].startswith("bcbl32")} == {"1x256x89"}
    for sp in SPLITS:
        assert (reference.out / "plots" / f"class_accuracy_split{sp}.png").stat().st_size > 1000
    last = said_all(PROGRESS, reference.stdout, logged=True)[-1]
    assert (last["ran"], last["total"], last["running"]) == (str(UNITS), str(UNITS), "0"), last.group(0)


def test_students_predict_the_evaluation_set_in_dcase_format(reference):
    from asc_ray.export import read_dcase_output

    for sp in SPLITS:
        for s in STUDENTS:
            files, labels, probs = read_dcase_output(
                Layout(reference.out).unit(UnitRef(s, sp, 0)).eval_output
            )
            assert files == [n[len("audio/") :] for n in reference.eval_names]
            assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)


def test_mlflow_has_a_parent_run_with_tagged_children(reference):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=reference.uri)
    exp = c.get_experiment_by_name("asc-ray")
    runs = c.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    teachers = {
        (r.data.tags["system"], r.data.tags["split"]) for r in kids if r.data.tags["role"] == "teacher"
    }
    students = {
        (r.data.tags["system"], r.data.tags["split"]) for r in kids if r.data.tags["role"] == "student"
    }
    assert teachers == {(t, str(s)) for t in TEACHERS for s in SPLITS}
    assert students == {(t, str(s)) for t in STUDENTS for s in SPLITS}
    assert [r.data.tags["system"] for r in kids if r.data.tags["role"] == "pretrain"] == [
        PretrainRef("passt").name
    ]
    # the run's seed (config `seed`), on the parent and every child, as a param and a tag
    assert parents[0].data.params["seed"] == "0"
    assert all(r.data.tags["seed"] == r.data.params["seed"] == "0" for r in kids), [r.data.tags for r in kids]
    kd = next(r for r in kids if r.data.tags["system"] == "kd_ensemble" and r.data.tags["split"] == "100")
    assert kd.data.tags["augment"] == "fms+dir" and kd.data.params["kd.lam"] == "0.98"
    assert 0 <= kd.data.metrics["test_macro_acc"] <= 1
    assert len(c.get_metric_history(kd.info.run_id, "train_loss")) == 2  # per epoch
    arts = {a.path for a in c.list_artifacts(kd.info.run_id)}
    assert {"output.csv", "class_accuracy.png", "confusion.png", "output.complexity.json", "model"} <= arts
    assert any(a.path.endswith(".md") for a in c.list_artifacts(pid))
    # what each unit really trains with: its own seed; the baseline's recipe (smoke: 10 warm-up steps, the roll)
    bl = next(r for r in kids if r.data.tags["system"] == "baseline" and r.data.tags["split"] == "100")
    assert bl.data.params["roll_s"] == "0.1" and bl.data.params["warmup_steps"] == "10"
    assert kd.data.params["roll_s"] == "0.0" and kd.data.params["input_shape"] == "1x256x65"
    # teachers each their own seed; the students of a split (one seed here) share theirs, so that kd_ensemble
    # and its controls differ only by what they learn from
    by_role = {role: [r for r in kids if r.data.tags["role"] == role] for role in ("teacher", "student")}
    assert len({r.data.params["train_seed"] for r in by_role["teacher"]}) == len(by_role["teacher"])
    assert len({(r.data.tags["split"], r.data.params["train_seed"]) for r in by_role["student"]}) == len(
        SPLITS
    )
    rows = _results(reference.out / "results.csv")
    assert (
        abs(
            parents[0].data.metrics["kd_ensemble.split100.seed0.test_macro_acc"]
            - float(rows[("kd_ensemble", 100)]["test_macro_acc"])
        )
        < 1e-6
    )
    assert "teachers.split100.test_macro_acc" in parents[0].data.metrics  # the ensemble, beside the students


def _versions(uri: str) -> dict[tuple[str, int], list]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return {
        (s, sp): c.search_model_versions(f"name = '{registered_name(s, sp)}'")
        for s in STUDENTS
        for sp in SPLITS
    }


def test_each_student_is_a_registered_mlflow_model_with_its_accuracy(reference):
    import mlflow
    from mlflow.tracking import MlflowClient

    rows = _results(reference.out / "results.csv")
    for (s, sp), versions in _versions(reference.uri).items():
        assert len(versions) == 1, (s, sp, versions)
        v = versions[0]
        acc = float(rows[(s, sp)]["test_macro_acc"])  # % in results.csv
        assert abs(100 * float(v.tags["test_macro_acc"]) - acc) < 0.01
        assert f"{acc:.2f} %" in v.description  # its figure, readable in the registry
        assert v.tags["key"] and v.run_id == rows[(s, sp)]["mlflow_run_id"]
    c = MlflowClient(tracking_uri=reference.uri)
    exp = c.get_experiment_by_name("asc-ray")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = next(r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "pipeline")
    assert "results_table.json" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    # loadable by name, without the pipeline: raw 32 kHz waveforms in, 10 probabilities out
    mlflow.set_tracking_uri(reference.uri)
    model = mlflow.pyfunc.load_model(f"models:/{registered_name('kd_ensemble', 100)}/1")
    probs = model.predict(np.random.default_rng(0).standard_normal((2, 48000)).astype(np.float32) * 0.1)
    assert probs.shape == (2, 10) and np.allclose(probs.to_numpy().sum(axis=1), 1, atol=1e-6)


def test_mlflow_ui_opens_on_the_students_of_a_split_with_their_accuracy(reference, tmp_path):
    """A real `mlflow server` and a real headless Chromium on the link the pipeline printed."""
    from helpers.procs import PY, free_port
    from helpers.serving import browse, env_with_venv_bin, running, runs_table

    link = next(  # the link the pipeline printed for split 100's students
        re.search(r"http://\S+", line).group(0)
        for line in reference.stdout.splitlines()
        if "viewStateShareKey=asc-ray-students-split100" in line
    )
    port = free_port()
    link = link.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}")
    cmd = [
        PY,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        reference.uri,
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    shot = tmp_path / "mlflow_ui_students_split100.png"
    with running(
        cmd, env_with_venv_bin(tmp_path), f"http://127.0.0.1:{port}/health", tmp_path / "server.log"
    ):
        names = [f"{s} split100" for s in STUDENTS]
        dom = browse(link, shot, names + ["test_macro_acc"])
    keep = Path(os.environ.get("ASC_RAY_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)
    assert shot.stat().st_size > 20_000
    table = runs_table(dom)
    # a run name as the UI shows it: "#a6630c kd_ensemble split100 seed0" (its colour, then the name)
    shown = {
        (n := r["attributes.`Run Name`"].split())[n.index("split100") - 1]: r
        for r in table
        if "attributes.`Run Name`" in r
    }
    assert set(shown) == set(STUDENTS), table  # the students of split 100, nothing else
    rows = _results(reference.out / "results.csv")
    for s, r in shown.items():
        assert (
            abs(float(r["metrics.`test_macro_acc`"]) - float(rows[(s, 100)]["test_macro_acc"]) / 100) < 5e-3
        )
    accs = [float(r["metrics.`test_macro_acc`"]) for r in table if "metrics.`test_macro_acc`" in r]
    assert accs == sorted(accs, reverse=True)  # best first


def test_the_same_command_again_reuses_every_unit_and_changes_nothing(reference, tmp_path):
    """Resume keys are per unit (tests/pipeline/test_seeds.py: other splits and seeds keep them): the same
    command on a finished output dir (a copy of the reference's, with its MLflow store) trains nothing, starts no
    Ray Train or Tune run and gives the same results; its parent run shows every unit as a child that points to
    the run that trained it, and no student gets a new registered version."""
    from mlflow.tracking import MlflowClient

    cwd, out = reference.copy(tmp_path)
    table = (out / "logits" / "teachers_split100.parquet").read_bytes()
    records = {p: p.stat().st_mtime_ns for p in Layout(out).records()}
    runs = sorted((out / "ray_results").iterdir())
    again = reference.again(cwd, out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    to_run = said(TO_RUN, again.stdout, logged=True)
    assert to_run and to_run["todo"] == "0" and int(to_run["reused"]) == UNITS, again.stdout[-3000:]
    assert not said(START, again.stdout, logged=True)
    assert {p: p.stat().st_mtime_ns for p in records} == records  # no unit finished again
    assert sorted((out / "ray_results").iterdir()) == runs  # no Ray Train / Tune run started
    assert _results(out / "results.csv") == _results(reference.out / "results.csv")
    assert (out / "logits" / "teachers_split100.parquet").read_bytes() == table
    c = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = c.get_experiment_by_name("asc-ray").experiment_id
    first, second = c.search_runs([exp], "tags.role = 'pipeline'", order_by=["start_time ASC"])
    trained = {  # the pretraining has no split
        (k.data.tags["system"], k.data.tags.get("split")): k.info.run_id
        for k in c.search_runs([exp], f"tags.mlflow.parentRunId = '{first.info.run_id}'", max_results=500)
    }
    kids = c.search_runs([exp], f"tags.mlflow.parentRunId = '{second.info.run_id}'", max_results=500)
    reused = {(k.data.tags["system"], k.data.tags.get("split")): k.data.tags.get("reused_from") for k in kids}
    assert reused == trained  # every unit, pointing to the run that trained it
    assert all(len(v) == 1 for v in _versions(f"sqlite:///{cwd}/mlflow.db").values())  # no new version


def test_console_is_asc_rays_one_line_per_unit_start_and_finish(reference):
    results = said(RESULTS, reference.stdout, logged=True)
    lines = [ln for ln in reference.stdout[: results.start()].splitlines() if ln.strip()]  # before the table
    ours = [ln for ln in lines if re.match(STAMP, ln)]
    others = [ln for ln in lines if not re.match(STAMP, ln)]
    assert len(ours) >= 0.8 * len(lines), "\n".join(others)[:3000]
    log = "\n".join(ours)
    for split in SPLITS:
        for s in (*TEACHERS, *STUDENTS):
            unit = UnitRef(s, split, 0 if s in STUDENTS else None).name
            assert [m["unit"] for m in said_all(START, log, logged=True)].count(unit) == 1, unit
            assert [m["unit"] for m in said_all(DONE, log, logged=True)].count(unit) == 1, unit
    for unit in (PretrainRef("passt").name,):  # once per run, whatever the splits
        assert [m["unit"] for m in said_all(DONE, log, logged=True)].count(unit) == 1, unit
    assert len(said_all(PROGRESS, log, logged=True)) == UNITS  # one per unit finished, with its ETA
    # per-epoch lines are in each unit's own log
    log = Layout(reference.out).unit(UnitRef("kd_ensemble", 100, 0)).log.read_text()
    assert f"[{UnitRef('kd_ensemble', 100, 0)}] epoch 2/2" in log  # named as its rank line names it


def test_a_split_starts_its_students_before_the_other_splits_teachers_are_done(reference):
    """The graph, not four global stages: bcbl24 / baseline need no teachers and start at once, and split 10's
    kd_ensemble does not wait for split 100's teachers (visible in the timeline and in MLflow)."""
    import json

    from mlflow.tracking import MlflowClient

    timeline = json.loads((reference.out / "timeline.json").read_text())
    by = {t["label"]: t for t in timeline}
    last_teacher_end = {sp: max(by[f"{t} split{sp}"]["end"] for t in TEACHERS) for sp in SPLITS}
    for sp, other in ((10, 100), (100, 10)):
        assert by[f"baseline split{sp} seed0"]["start"] < last_teacher_end[other]
    # a split's kd_ensemble starts once its own teachers are done, whatever the other split does
    for sp in SPLITS:
        assert by[f"kd_ensemble split{sp} seed0"]["start"] >= last_teacher_end[sp] - 1
    # each student is reported when its own trial ends, not when the last trial of its Tuner does
    for s in STUDENTS:
        for sp in SPLITS:
            rec = json.loads(Layout(reference.out).unit(UnitRef(s, sp, 0)).record.read_text())
            assert by[f"{s} split{sp} seed0"]["end"] - rec["finished"] < 60, (s, sp)
    assert (reference.out / "plots" / "timeline.png").stat().st_size > 5000
    c = MlflowClient(tracking_uri=reference.uri)
    exp = c.get_experiment_by_name("asc-ray")
    runs = c.search_runs([exp.experiment_id], max_results=500)
    parent = next(r for r in runs if r.data.tags.get("role") == "pipeline")
    assert "plots/timeline.png" in {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    kids = {(r.data.tags.get("system"), r.data.tags.get("split")): r for r in runs}
    teachers_end = max(kids[(t, str(sp))].info.end_time for t in TEACHERS for sp in SPLITS)
    assert kids[("baseline", "10")].info.start_time < teachers_end


def test_students_of_one_tuner_share_their_trial_processes(reference):
    """Tune reuses a finished trial's process for the next trial of its Tuner (reuse_actors): the students' rank
    lines name fewer processes than there are students (that a reused process trains the same model: the chaos
    test's bit-for-bit comparison, where kills change which trial runs in which process)."""
    pids = {}
    for s in STUDENTS:
        for sp in SPLITS:
            unit = UnitRef(s, sp, 0)
            rank = RANK_LINE.search(Layout(reference.out).unit(unit).log.read_text())
            assert rank and rank["unit"] == unit.name, unit
            pids[unit] = int(rank["pid"])
    assert len(set(pids.values())) < len(pids), pids
