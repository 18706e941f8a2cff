"""What a finished unit leaves in its folder, and its one result record.

    <output-dir>/<teachers|students>/split<N>/<system>/
        result.json      the unit's record, written once at the end: figures, key, MLflow run, node, times
        model.pt, model_fp16.pt, output.csv (+ .complexity.json), class_accuracy.png, confusion.png,
        split_logits.npy (systems another one learns from), test_logits.npy (teachers: for the ensemble's score)

Everything that needs a unit's result reads the record: resume (its key), the results tables, the
scheduler, MLflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from asc_ray.io import atomic_torch_save, atomic_write_json

RECORD = "result.json"


def unit_dir(output_dir: str | Path, role: str, split: int, system: str) -> Path:
    return Path(output_dir) / f"{role}s" / f"split{split}" / system


def write_record(folder: str | Path, record: dict) -> Path:
    return atomic_write_json(Path(folder) / RECORD, record)


def read_record(folder: str | Path, key: str | None = None) -> dict | None:
    """The unit's record; None when there is none, or when `key` is given and the record is for another key."""
    p = Path(folder) / RECORD
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


def finish_unit(trainer) -> dict:
    """Evaluate the selected model on test and write every output file of the unit, its record last."""
    from asc_ray.features import describe, frontend_sample_rate, input_shape
    from asc_ray.train import build_model

    t_finish = time.time()
    from asc_ray.complexity import check_student, export_fp16, measure
    from asc_ray.export import plot_class_accuracy, plot_confusion, write_dcase_output

    best = torch.load(
        trainer.out_dir / "checkpoint" / "best.pt", map_location=trainer.device, weights_only=True
    )
    test_logits, res = trainer.evaluate(trainer.data.test_files, best)
    res_fp32 = res
    model = build_model(trainer.system, trainer.cfg, pretrained=False)
    model.load_state_dict(best)
    cx = measure(model, (1, *input_shape(trainer.system.frontend)))
    out = trainer.out_dir
    atomic_torch_save(out / "model.pt", best)  # a full disk is one clear error, never half a file
    files = {"model": out / "model.pt"}
    if trainer.system.role == "student":
        check_student(cx, trainer.system.name)
        files["model_fp16"] = export_fp16(model, out / "model_fp16.pt")
        # the reported figures (and output.csv) are the deployed model's: the fp16 export, run in fp16
        test_logits, res = evaluate_fp16(trainer, files["model_fp16"])
        drop = res_fp32.metrics["macro_acc"] - res.metrics["macro_acc"]
        if drop > FP16_WARN_DROP:
            trainer.log(
                f"[{trainer.tag}] WARNING: the fp16 model's test macro accuracy is {100 * drop:.1f} points "
                f"below fp32 ({100 * res.metrics['macro_acc']:.2f}% vs "
                f"{100 * res_fp32.metrics['macro_acc']:.2f}%)"
            )
    files["output"] = write_dcase_output(
        out / "output.csv", trainer.data.test_files, test_logits, cx.to_dict()
    )
    files["complexity"] = out / "output.complexity.json"
    from asc_ray.predict import write_unit_spec  # what asc-ray-predict / the MLflow model rebuild from

    files["unit"] = write_unit_spec(out, trainer.system, trainer.cfg)
    class_acc = {k.split("/", 1)[1]: v for k, v in res.metrics.items() if k.startswith("class_acc/")}
    files["class_plot"] = plot_class_accuracy(
        {trainer.system.name: class_acc},
        out / "class_accuracy.png",
        f"{trainer.system.name}, split {trainer.split}: class-wise test accuracy",
    )
    files["confusion_plot"] = plot_confusion(
        res.confusion, out / "confusion.png", f"{trainer.system.name}, split {trainer.split}: test confusion"
    )
    np.save(out / "confusion.npy", res.confusion)
    if trainer.system.role == "teacher":
        # its test logits, in test.csv's order: the evaluation scores the teachers' ensemble (their mean)
        np.save(out / "test_logits.npy", test_logits)
        files["test_logits"] = out / "test_logits.npy"
    if trainer.system.feeds:
        # logits over the split's training files: what the next stage learns from
        split_logits = trainer.predict(trainer.data.split_files, best)
        np.save(out / "split_logits.npy", split_logits)
        files["split_logits"] = out / "split_logits.npy"
    result = {
        "system": trainer.system.name,
        "split": trainer.split,
        "role": trainer.system.role,
        "augment": trainer.system.augment,
        "selected_epoch": trainer.best["epoch"] + 1,
        "selected_on": getattr(trainer, "select", trainer.cfg["train"]["select"]),
        "val_macro_acc": trainer.best["val_macro_acc"],
        **{f"test_{k}": v for k, v in res.metrics.items()},
        "test_macro_acc_fp32": res_fp32.metrics["macro_acc"],
        "tested_in": "fp16" if trainer.system.role == "student" else "fp32",
        "train_seed": trainer.seed,
        "input_shape": "x".join(map(str, input_shape(trainer.system.frontend))),
        "sample_rate": frontend_sample_rate(trainer.system.frontend),
        "params": cx.params,
        "macs": cx.macs,
        "files": {k: str(v) for k, v in files.items()},
    }
    # what the caller knows (key, MLflow run, node, when it started): one record, one write
    result.update(
        trainer.record_extra, fit_started=trainer.fit_started, finish_started=t_finish, finished=time.time()
    )
    write_record(out, result)
    trainer.log(
        f"[{trainer.tag}] done: test macro accuracy {100 * result['test_macro_acc']:.2f}% "
        f"({result['tested_in']}; fp32 {100 * result['test_macro_acc_fp32']:.2f}%; "
        f"selected epoch {result['selected_epoch']} on {getattr(trainer, 'select', 'val')}), "
        f"input {describe(trainer.system.frontend)}, {cx.params:,} params, {cx.macs / 1e6:.1f} M MACs"
    )
    return result


def ensemble_on_test(ds, paths) -> tuple[np.ndarray, dict]:
    """The teachers' ensemble on test: the mean of their `test_logits.npy` (test.csv's order), what kd_ensemble
    learns from on its training files, and its metrics (asc_ray.metrics.evaluate)."""
    from asc_ray.metrics import evaluate

    files = ds.test_files()
    logits = np.mean([np.load(p) for p in paths], axis=0)
    return logits, evaluate(logits, ds.labels(files), ds.devices(files)).metrics


def evaluate_fp16(trainer, fp16_path: str | Path):
    """The deployed model on test: the fp16 export loaded back and run in half precision (weights and
    activations; the log-mel front-end runs in fp32 and its output is cast to fp16, as the DCASE baseline's
    test step does). CPU and GPU both compute in fp16. Returns (logits, EvalResult)."""
    from asc_ray.predict import load_trained

    model = load_trained(trainer.system, trainer.cfg, fp16_path)  # an fp16 file loads as an fp16 model
    return trainer.evaluate(trainer.data.test_files, model=model)
