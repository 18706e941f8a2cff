"""Metrics against hand-computed values."""

import numpy as np
import pytest
import torch

from asc_ray.data.tau import SCENES
from asc_ray.metrics import EvalResult, class_accuracy, confusion_matrix, evaluate, macro_accuracy

# Imbalanced hand-made example: class 0 has 4 clips, class 1 two, class 2 one.
TARGET = np.array([0, 0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 0, 1, 1, 0, 2])
# per class: 3/4, 1/2, 1/1 -> macro (0.75 + 0.5 + 1) / 3 = 0.75; plain 5/7


def test_macro_accuracy_differs_from_plain_accuracy():
    assert macro_accuracy(PRED, TARGET) == pytest.approx(0.75)
    assert float((PRED == TARGET).mean()) == pytest.approx(5 / 7)


def test_macro_accuracy_majority_class_predictor():
    # 8 clips of class 0, 2 of class 1, always predicting 0: plain 0.8 but macro only 0.5
    target = np.array([0] * 8 + [1] * 2)
    assert macro_accuracy(np.zeros(10, dtype=int), target) == pytest.approx(0.5)


def test_absent_classes_are_skipped_not_counted_as_zero():
    acc = class_accuracy(PRED, TARGET)
    assert acc[:3] == pytest.approx([0.75, 0.5, 1.0])
    assert np.isnan(acc[3:]).all()


def test_confusion_matrix_entries():
    cm = confusion_matrix(PRED, TARGET)
    assert cm.shape == (10, 10) and cm.dtype == np.int64
    assert cm[0, 0] == 3 and cm[0, 1] == 1  # rows are true classes
    assert cm[1, 1] == 1 and cm[1, 0] == 1
    assert cm[2, 2] == 1
    assert cm.sum() == len(TARGET)


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        confusion_matrix(np.array([10]), np.array([0]))


def _logits_for(pred: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(pred), 10))
    logits[np.arange(len(pred)), pred] += 10.0  # make `pred` the argmax
    return logits


def test_evaluate_keys_and_values():
    devices = ["a", "a", "s1", "s4", "b", "s5", "a"]
    # correct: T T T F T F T
    logits = _logits_for(PRED)
    res = evaluate(logits, TARGET, devices)
    assert isinstance(res, EvalResult)
    m = res.metrics
    assert m["macro_acc"] == pytest.approx(0.75)
    assert m["acc"] == pytest.approx(5 / 7)
    expected_loss = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(TARGET)).item()
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-9)
    assert m["class_acc/airport"] == pytest.approx(0.75)
    assert m["class_acc/bus"] == pytest.approx(0.5)
    assert m["class_acc/metro"] == pytest.approx(1.0)
    assert "class_acc/park" not in m  # absent from target
    assert {k for k in m if k.startswith("device_acc/")} == {
        f"device_acc/{d}" for d in ("a", "b", "s1", "s4", "s5")
    }
    assert m["device_acc/a"] == pytest.approx(1.0)  # clips 0, 1, 6
    assert m["device_acc/s4"] == pytest.approx(0.0)
    # real: a, a, b, a -> 4/4; seen: s1 -> 1/1; unseen: s4, s5 -> 0/2
    assert m["group_acc/real"] == pytest.approx(1.0)
    assert m["group_acc/seen"] == pytest.approx(1.0)
    assert m["group_acc/unseen"] == pytest.approx(0.0)
    assert all(isinstance(v, float) for v in m.values())
    np.testing.assert_array_equal(res.confusion, confusion_matrix(PRED, TARGET))


def test_evaluate_group_keys_only_for_present_groups():
    res = evaluate(_logits_for(PRED), TARGET, ["a"] * 7)
    assert [k for k in res.metrics if k.startswith("group_acc/")] == ["group_acc/real"]


def test_to_percent_scales_accuracies_not_loss():
    res = evaluate(_logits_for(PRED), TARGET, ["a"] * 7)
    pct = res.to_percent()
    assert pct["macro_acc"] == pytest.approx(75.0)
    assert pct["loss"] == res.metrics["loss"]


def test_all_scenes_present_gives_every_class_key():
    target = np.arange(10)
    res = evaluate(_logits_for(target), target, ["c"] * 10)
    assert [k.split("/")[1] for k in res.metrics if k.startswith("class_acc/")] == list(SCENES)
    assert res.metrics["macro_acc"] == pytest.approx(1.0)


def test_evaluate_rejects_bad_input():
    with pytest.raises(ValueError, match="devices"):
        evaluate(_logits_for(PRED), TARGET, ["a"] * 6)
    with pytest.raises(ValueError, match="unknown devices"):
        evaluate(_logits_for(PRED), TARGET, ["a"] * 6 + ["d"])
    bad = _logits_for(PRED)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(bad, TARGET, ["a"] * 7)
