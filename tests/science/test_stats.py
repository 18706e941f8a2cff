"""The intervals results.md prints: a paired bootstrap over seeds and test clips (asc_ray/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from asc_ray.stats import bootstrap, macro_accuracy

LABELS = np.repeat(np.arange(10), 100)


def test_the_estimate_is_the_mean_macro_accuracy_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    correct = rng.random((3, 1000)) < np.linspace(0.5, 0.9, 10).repeat(100)
    e = bootstrap(correct, LABELS)
    assert e.value == pytest.approx(macro_accuracy(correct, LABELS).mean())
    assert e.lo < e.value < e.hi and 0.01 < e.half_width < 0.06


def test_more_clips_give_a_narrower_interval():
    rng = np.random.default_rng(1)
    small = bootstrap(rng.random((1, 100)) < 0.7, np.repeat(np.arange(10), 10))
    large = bootstrap(rng.random((1, 2000)) < 0.7, np.repeat(np.arange(10), 200))
    assert large.half_width < small.half_width / 2


def test_a_paired_difference_cancels_what_both_share():
    rng = np.random.default_rng(2)
    a = rng.random((3, 1000)) < 0.7
    assert bootstrap(a, LABELS, a).value == 0 and bootstrap(a, LABELS, a).half_width == 0
    b = a.copy()
    b[:, ::10] = ~b[:, ::10]  # b differs from a on one clip in ten
    d = bootstrap(a, LABELS, b)
    assert d.value == pytest.approx((macro_accuracy(a, LABELS) - macro_accuracy(b, LABELS)).mean())
    unpaired = bootstrap(a, LABELS).half_width + bootstrap(b, LABELS).half_width
    assert d.half_width < unpaired / 2  # pairing removes the clips' shared difficulty


def test_shapes_must_match():
    with pytest.raises(ValueError):
        bootstrap(np.ones((2, 10), bool), LABELS)
    with pytest.raises(ValueError):
        bootstrap(np.ones((2, 1000), bool), LABELS, np.ones((3, 1000), bool))
