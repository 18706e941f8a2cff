"""What a pipeline run reports: results.csv/.md (the students, Table 3 beside them), teachers.csv/.md (each
teacher and their ensemble), the per-split class-wise plots, the timeline, the MLflow parent run's figures and
registered models, and the students' predictions on the evaluation set."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray

from asc_ray.console import log
from asc_ray.data.tau import SCENES, EvalSet, TauDataset
from asc_ray.errors import AscRayError
from asc_ray.export import plot_class_accuracy, plot_timeline, read_dcase_output, write_dcase_output
from asc_ray.features import frontend_sample_rate
from asc_ray.io import atomic_write_json
from asc_ray.layout import Layout, UnitRef
from asc_ray.mlflow_store import STORE_FILE, sqlite_path
from asc_ray.pipeline.runtime import unit_resources
from asc_ray.pipeline.storage import verify_on_this_node
from asc_ray.predict import Classifier, unit_spec
from asc_ray.predict.mlflow_model import register_students
from asc_ray.report import run_header, write_results_table
from asc_ray.stats import interval
from asc_ray.systems import ABLATIONS, get_system
from asc_ray.train import ensemble_on_test

RecordOf = Callable[[UnitRef], dict | None]  # a finished unit's record, or None
# The paired differences results.md shows: what distillation itself buys (the same student, recipe and seeds,
# without KD), and what FocusNet adds on top of the KD student it learns from.
DIFFERENCES = (("kd_ensemble", "no_kd"), ("tfs", "kd_ensemble"))


def _row(name: str, split: int, r: dict) -> dict:
    return {
        "system": name,
        "split": split,
        **({"seed": r["seed"]} if r.get("seed") is not None else {}),
        "test_macro_acc": round(100 * r["test_macro_acc"], 2),
        "val_macro_acc": round(100 * r["val_macro_acc"], 2),
        "test_acc": round(100 * r["test_acc"], 2),
        "test_macro_acc_fp32": round(100 * r.get("test_macro_acc_fp32", float("nan")), 2),
        "train_seed": r.get("train_seed", ""),
        "input_shape": r.get("input_shape", ""),
        "sample_rate": r.get("sample_rate", ""),
        **{k[len("test_") :]: round(100 * v, 2) for k, v in r.items() if k.startswith("test_group_acc/")},
        "params": r["params"],
        "macs": r["macs"],
        "selected_epoch": r["selected_epoch"],
        "mlflow_run_id": r.get("run_id") or "",
    }


def correct_on_test(ds: TauDataset, rec: dict) -> np.ndarray:
    """Which test clips (test.csv's order) the unit's deployed model classified right, from its output.csv."""
    files = ds.test_files()
    names, predicted, _ = read_dcase_output(rec["files"]["output"])
    by_name = dict(zip(names, predicted, strict=True))
    truth = ds.labels(files)
    return np.array([SCENES.index(by_name[f.split("/", 1)[-1]]) for f in files]) == truth


def ensemble_row(split: int, ds: TauDataset, paths: list[str]) -> dict:
    """The teachers' ensemble on test as a row `teachers` of teachers.csv / teachers.md, so that students can
    be read against what they were taught by."""
    logits, m = ensemble_on_test(ds, paths)
    log(
        f"teachers split{split}: the ensemble of {len(paths)} teachers (mean logits) has test macro "
        f"accuracy {100 * m['macro_acc']:.2f}%, mean |logit| {np.abs(logits).mean():.2f}"
    )
    return {
        "system": "teachers",
        "split": split,
        "test_macro_acc": round(100 * m["macro_acc"], 2),
        "test_acc": round(100 * m["acc"], 2),
        "mean_abs_logit": round(float(np.abs(logits).mean()), 3),
        **{k: round(100 * v, 2) for k, v in m.items() if k.startswith("group_acc/")},
    }


def write_results(
    cfg, splits: list[int], data_dir: Path, out: Path, record_of: RecordOf, timeline: list
) -> tuple[list[dict], list[dict]]:
    """results.* and teachers.* with their plots; returns the students' and the teachers' rows."""
    ds = TauDataset.open(data_dir, cfg.data.split_dir)
    labels = ds.labels(ds.test_files())
    rows, teacher_rows, estimates, differences = [], [], {}, {}
    for split in splits:
        per_system, teacher_logits, correct = {}, [], {}
        for name in cfg.teachers.systems:
            r = record_of(UnitRef(name, split))
            if r is not None:
                teacher_rows.append(_row(name, split, r))
                teacher_logits.append(r.get("files", {}).get("test_logits"))
        for name in cfg.students.systems:
            recs = [r for seed in cfg.students.seeds if (r := record_of(UnitRef(name, split, seed)))]
            if not recs:
                continue
            rows += [_row(name, split, r) for r in recs]
            correct[name] = {r.get("seed"): correct_on_test(ds, r) for r in recs}
            estimates[(split, name)] = interval(np.stack(list(correct[name].values())), labels)
            first = recs[0]  # the class-wise plot shows the first seed's model
            per_system[name] = {
                k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("test_class_acc/")
            }
        for a, b in DIFFERENCES:
            shared = [k for k in correct.get(a, {}) if k in correct.get(b, {})]
            if shared:
                differences[(split, f"{a} - {b}")] = interval(
                    np.stack([correct[a][k] for k in shared]),
                    labels,
                    np.stack([correct[b][k] for k in shared]),
                )
        n_teachers = len(cfg.teachers.systems)
        if n_teachers and len(teacher_logits) == n_teachers and all(teacher_logits):
            teacher_rows.append(ensemble_row(split, ds, teacher_logits))
        if per_system:
            plot_class_accuracy(
                per_system,
                out / "plots" / f"class_accuracy_split{split}.png",
                f"Class-wise test accuracy, split {split}%",
            )
    if timeline:  # this run's units (reused ones did not run): a bar each, per node
        entries = [{"label": str(u), "role": u.role, **t} for u, t in timeline]
        atomic_write_json(out / "timeline.json", entries)
        plot_timeline(entries, out / "plots" / "timeline.png", f"Pipeline timeline ({len(entries)} units)")
    if not rows:
        raise AscRayError(
            "no student results to evaluate",
            path=out,
            fix="run the students stage first (jobs/students.py or jobs/full_pipeline.py)",
        )
    for r in rows:  # each unit's own interval (one seed, its test clips)
        r["test_macro_acc_ci95"] = round(100 * _unit_halfwidth(ds, labels, record_of, r), 2)
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    header = run_header(cfg.profile, data_dir, date, epochs=cfg.train.epochs)
    write_results_table(
        rows, out / "results.csv", out / "results.md", header, estimates, differences, ABLATIONS
    )
    if teacher_rows:
        header = run_header(cfg.profile, data_dir, date, "Teachers", cfg.train.epochs)
        write_results_table(teacher_rows, out / "teachers.csv", out / "teachers.md", header)
    return rows, teacher_rows


def _unit_halfwidth(ds, labels, record_of: RecordOf, row: dict) -> float:
    rec = record_of(UnitRef(row["system"], row["split"], row.get("seed")))
    return interval(correct_on_test(ds, rec)[None], labels).half_width


def report_to_mlflow(
    tracker, parent_run_id: str, out: Path, rows: list[dict], teacher_rows: list[dict], record_of: RecordOf
) -> None:
    """The parent run's figures and files, and every student as a registered model (AscRayError, after the
    rest, when one is not)."""
    ensembles = [r for r in teacher_rows if r["system"] == "teachers"]
    seed = lambda r: "" if r.get("seed") is None else f".seed{r['seed']}"  # noqa: E731
    tracker.log_metrics(
        parent_run_id,
        {
            f"{r['system']}.split{r['split']}{seed(r)}.test_macro_acc": r["test_macro_acc"]
            for r in rows + ensembles
        },
    )
    tracker.log_artifacts(
        parent_run_id, [out / n for n in ("results.csv", "results.md", "teachers.csv", "teachers.md")]
    )
    tracker.log_artifacts(parent_run_id, sorted((out / "plots").glob("*.png")), "plots")
    records = [record_of(UnitRef(r["system"], r["split"], r.get("seed"))) for r in rows]
    folder_of = lambda r: Layout(out).unit_dir(UnitRef(r["system"], r["split"], r.get("seed")))  # noqa: E731
    # raises when one is not registered
    if register_students(tracker, parent_run_id, records, folder_of, log) and sqlite_path(tracker.uri):
        where = (
            "--output-dir " + str(out)
            if sqlite_path(tracker.uri) == out / STORE_FILE
            else "--tracking-uri " + tracker.uri
        )
        log(f"MLflow UI on this store, where those links lead: asc-ray mlflow-ui {where}")


def export_eval_set(
    cfg, out: Path, rows: list[dict], eval_set: EvalSet, eval_caches: dict, shared: list, use_gpu: bool
):
    """DCASE submission files for the evaluation set, one per student and split (Ray tasks, in parallel)."""
    res = unit_resources(cfg, "student", use_gpu)  # a student's, as its Tune trial
    cpus, gpus = res.pop("CPU"), res.pop("GPU", 0)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, resources=res)(_eval_task)
    refs = []
    for r in rows:
        unit = Layout(out).unit(UnitRef(r["system"], r["split"], r.get("seed")))
        rate = frontend_sample_rate(get_system(r["system"]).frontend)
        # the deployed model: its predictions are in fp16
        refs.append(
            task.remote(
                r["system"],
                cfg,
                str(unit.model_fp16),
                str(eval_set.root),
                eval_caches[rate],
                str(unit.eval_output),
                shared,
            )
        )
    for path in ray.get(refs):
        log(f"evaluation set predictions: {path}")


def _eval_task(system: str, cfg, model_path: str, eval_dir: str, cache, out: str, shared: list) -> str:
    verify_on_this_node(shared)
    ev = EvalSet(eval_dir)
    store = cache.open()  # pre-flight's cache of the evaluation set (this node's copy on a cluster)
    clf = Classifier.from_weights(unit_spec(get_system(system), cfg), model_path)
    logits = clf.logits_of(store, ev.files)
    cx = json.loads((Path(model_path).parent / "output.complexity.json").read_text())
    return str(write_dcase_output(out, ev.files, logits, cx))
