"""Evaluation metrics: the DCASE macro class accuracy plus class-, device- and device-group-wise accuracy.

All functions take integer class indices in SCENES order (0..9) and plain numpy arrays, so they run on
anything a model produced. Accuracies are fractions in 0..1 (MLflow-ready); `EvalResult.to_percent()`
gives percentages for tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asc_ray.data.tau import DEVICE_GROUP, DEVICES, SCENES

GROUPS = ("real", "seen", "unseen")


def _as_labels(a: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got dtype {a.dtype} shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(f"{name} has class indices outside 0..{n_classes - 1}")
    return a.astype(np.int64, copy=False)


def _check_pair(pred: np.ndarray, target: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_labels(pred, n_classes, "pred")
    target = _as_labels(target, n_classes, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} items but target has {target.size}")
    if target.size == 0:
        raise ValueError("cannot evaluate on zero clips")
    return pred, target


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """int64 [n_classes, n_classes] counts: rows = true class, columns = predicted class."""
    pred, target = _check_pair(pred, target, n_classes)
    flat = np.bincount(target * n_classes + pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def class_accuracy(pred: np.ndarray, target: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Per-class accuracy (recall) as float [n_classes]; NaN for classes with no clip in `target`."""
    cm = confusion_matrix(pred, target, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def macro_accuracy(pred: np.ndarray, target: np.ndarray, n_classes: int = 10) -> float:
    """The DCASE metric: mean over classes of per-class accuracy.

    Classes absent from `target` are skipped (their accuracy is undefined), so the mean is over the
    classes present. On the official test split all 10 are present and this is the plain DCASE number.
    """
    return float(np.nanmean(class_accuracy(pred, target, n_classes)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # shift for numerical stability
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class EvalResult:
    """`metrics`: flat dict of floats for MLflow; `confusion`: int64 [10, 10], rows = true, cols = predicted."""

    metrics: dict[str, float]
    confusion: np.ndarray

    def to_percent(self) -> dict[str, float]:
        """The metrics with accuracies in percent (the loss stays as it is), for tables and reports."""
        return {k: (v if k == "loss" else 100.0 * v) for k, v in self.metrics.items()}


def evaluate(logits: np.ndarray, target: np.ndarray, devices: Sequence[str]) -> EvalResult:
    """Evaluate a model's test logits [N, 10] against integer targets [N] with each clip's device.

    Keys of `.metrics`: "macro_acc", "acc" (plain accuracy), "loss" (mean cross-entropy),
    "class_acc/<scene>" for scenes present in `target`, "device_acc/<device>" and
    "group_acc/<real|seen|unseen>" for devices/groups present. Device and group accuracy are plain
    accuracy over that device's (group's) clips, as the DCASE 2024 baseline reports them.
    """
    n_classes = len(SCENES)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise ValueError(f"logits must be [N, {n_classes}], got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf: the model diverged or the logits table is corrupt")
    pred = logits.argmax(axis=1)
    pred, target = _check_pair(pred, target, n_classes)
    devices = np.asarray(list(devices), dtype=object)
    if devices.shape != target.shape:
        raise ValueError(f"devices has {devices.size} items but target has {target.size}")
    unknown = sorted(set(devices) - set(DEVICES))
    if unknown:
        raise ValueError(f"unknown devices {unknown}; expected some of {list(DEVICES)}")

    correct = pred == target
    cm = confusion_matrix(pred, target, n_classes)
    per_class = class_accuracy(pred, target, n_classes)
    loss = -_log_softmax(logits)[np.arange(target.size), target].mean()

    metrics: dict[str, float] = {
        "macro_acc": float(np.nanmean(per_class)),
        "acc": float(correct.mean()),
        "loss": float(loss),
    }
    for scene, acc in zip(SCENES, per_class, strict=True):
        if not np.isnan(acc):  # absent classes are left out rather than logged as NaN
            metrics[f"class_acc/{scene}"] = float(acc)
    for device in DEVICES:
        mask = devices == device
        if mask.any():
            metrics[f"device_acc/{device}"] = float(correct[mask].mean())
    groups = np.array([DEVICE_GROUP[d] for d in devices], dtype=object)
    for group in GROUPS:
        mask = groups == group
        if mask.any():
            metrics[f"group_acc/{group}"] = float(correct[mask].mean())
    return EvalResult(metrics=metrics, confusion=cm)
