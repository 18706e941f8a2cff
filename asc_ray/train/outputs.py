"""What a finished unit leaves in its folder (asc_ray.layout: where the folder is and its files' names), and its
one result record.

    result.json      the unit's record, written once at the end: figures, key, MLflow run, node, times
    model.pt, model_fp16.pt, output.csv (+ .complexity.json), class_accuracy.png, confusion.png,
    split_logits.npy (systems another one learns from), test_logits.npy (teachers: for the ensemble's score)

Everything that needs a unit's result reads the record: resume (its key), the results tables, the
scheduler, MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from asc_ray.complexity import check_student, export_fp16, measure
from asc_ray.export import plot_class_accuracy, plot_confusion, write_dcase_output
from asc_ray.features import describe, frontend_sample_rate, input_shape
from asc_ray.io import atomic_torch_save, atomic_write_json
from asc_ray.layout import UnitFiles
from asc_ray.metrics import EvalResult, evaluate
from asc_ray.predict import (
    Classifier,
    build_from_spec,
    load_weights,
    logits_of_each,
    unit_spec,
    write_unit_spec,
)
from asc_ray.systems import System
from asc_ray.train.data import RunData
from asc_ray.train.trainer import Fitted


def write_record(folder: str | Path, record: dict) -> Path:
    return atomic_write_json(UnitFiles(folder).record, record)


def read_record(folder: str | Path, key: str | None = None) -> dict | None:
    """The unit's record; None when there is none, or when `key` is given and the record is for another key."""
    p = UnitFiles(folder).record
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None  # a torn record is no record: the unit runs again
    if key is not None and rec.get("key") != key:
        return None
    return rec


FP16_WARN_DROP = 0.01  # warn when the deployed fp16 model is this much (1 point) below fp32 on test


def finish_unit(
    system: System,
    cfg,
    split: int,
    data: RunData,
    out: Path,
    fitted: Fitted,
    extra: dict | None = None,
    log: Callable[[str], None] = print,
    record: bool = True,
) -> dict:
    """Evaluate the selected model on test and write every output file of the unit, its record last. `extra`:
    what the caller knows (key, MLflow run, node, when it started) goes into the record too. record=False: the
    caller writes the record (write_record) once it has done what must come before the unit counts as done."""
    t_finish = time.time()
    out, f = Path(out), UnitFiles(out)
    tag = fitted.name
    best = torch.load(fitted.weights, map_location=fitted.device, weights_only=True)
    spec = unit_spec(system, cfg)
    run = {"device": fitted.device, "channels_last": fitted.channels_last, "amp": fitted.amp}
    fp32 = Classifier.from_weights(spec, best, **run)
    model = load_weights(build_from_spec(spec), best, system.name)
    cx = measure(model, (1, *input_shape(system.frontend)))
    atomic_torch_save(f.model, best)  # a full disk is one clear error, never half a file
    files = {"model": f.model}
    if system.role == "student":
        check_student(cx, system.name)
        files["model_fp16"] = export_fp16(model, f.model_fp16)
        # the reported figures (and output.csv) are the deployed model's: the fp16 export, run in fp16; both
        # passes share one front-end pass (it costs a CPU as much as the model)
        fp16 = Classifier.from_weights(spec, files["model_fp16"], **run)
        logits_fp32, test_logits = logits_of_each([fp32, fp16], data.store, data.test_files)
        res_fp32 = _evaluate(data, data.test_files, logits_fp32)
        res = _evaluate(data, data.test_files, test_logits)
        drop = res_fp32.metrics["macro_acc"] - res.metrics["macro_acc"]
        if drop > FP16_WARN_DROP:
            log(
                f"[{tag}] WARNING: the fp16 model's test macro accuracy is {100 * drop:.1f} points "
                f"below fp32 ({100 * res.metrics['macro_acc']:.2f}% vs {100 * res_fp32.metrics['macro_acc']:.2f}%)"
            )
    else:
        test_logits = fp32.logits_of(data.store, data.test_files)
        res = res_fp32 = _evaluate(data, data.test_files, test_logits)
    files["output"] = write_dcase_output(f.output, data.test_files, test_logits, cx.to_dict())
    files["complexity"] = out / "output.complexity.json"
    files["unit"] = write_unit_spec(out, system, cfg)  # what asc-ray-predict / the MLflow model rebuild from
    class_acc = {k.split("/", 1)[1]: v for k, v in res.metrics.items() if k.startswith("class_acc/")}
    files["class_plot"] = plot_class_accuracy(
        {system.name: class_acc},
        out / "class_accuracy.png",
        f"{system.name}, split {split}: class-wise test accuracy",
    )
    files["confusion_plot"] = plot_confusion(
        res.confusion, out / "confusion.png", f"{system.name}, split {split}: test confusion"
    )
    np.save(out / "confusion.npy", res.confusion)
    if system.role == "teacher":
        # its test logits, in test.csv's order: the evaluation scores the teachers' ensemble (their mean)
        np.save(f.test_logits, test_logits)
        files["test_logits"] = f.test_logits
    if system.feeds:
        # logits over the split's training files: what the next stage learns from
        np.save(f.split_logits, fp32.logits_of(data.store, data.split_files))
        files["split_logits"] = f.split_logits
    result = {
        "system": system.name,
        "split": split,
        "role": system.role,
        "augment": system.augment,
        "selected_epoch": fitted.selected_epoch,
        "selected_on": fitted.selected_on,
        "val_macro_acc": fitted.val_macro_acc,
        **{f"test_{k}": v for k, v in res.metrics.items()},
        "test_macro_acc_fp32": res_fp32.metrics["macro_acc"],
        "tested_in": "fp16" if system.role == "student" else "fp32",
        "train_seed": fitted.train_seed,
        "input_shape": "x".join(map(str, input_shape(system.frontend))),
        "sample_rate": frontend_sample_rate(system.frontend),
        "params": cx.params,
        "macs": cx.macs,
        "files": {k: str(v) for k, v in files.items()},
    }
    result.update(extra or {}, fit_started=fitted.started, finish_started=t_finish, finished=time.time())
    if record:
        write_record(out, result)
    log(
        f"[{tag}] done: test macro accuracy {100 * result['test_macro_acc']:.2f}% "
        f"({result['tested_in']}; fp32 {100 * result['test_macro_acc_fp32']:.2f}%; "
        f"selected epoch {result['selected_epoch']} on {fitted.selected_on}), "
        f"input {describe(system.frontend)}, {cx.params:,} params, {cx.macs / 1e6:.1f} M MACs"
    )
    return result


def _evaluate(data: RunData, files: list[str], logits: np.ndarray) -> EvalResult:
    return evaluate(logits, data.ds.labels(files), data.ds.devices(files))


def ensemble_on_test(ds, paths) -> tuple[np.ndarray, dict]:
    """The teachers' ensemble on test: the mean of their `test_logits.npy` (test.csv's order), what kd_ensemble
    learns from on its training files, and its metrics (asc_ray.metrics.evaluate)."""
    files = ds.test_files()
    logits = np.mean([np.load(p) for p in paths], axis=0)
    return logits, evaluate(logits, ds.labels(files), ds.devices(files)).metrics
