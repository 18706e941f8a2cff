"""The intervals results.md and bench/kd_effect.py print (asc_ray/stats.py): their coverage on simulated known
truths with seed and clip variance both present, and what they do at the edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from asc_ray.stats import interval, macro_accuracy

LABELS = np.repeat(np.arange(10), 100)


def _truth(mu: float, class_offsets: np.ndarray, sd: float) -> float:
    """Macro accuracy in the population: E over clip and seed effects of sigmoid(mu + class + effect)."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    return float(np.mean([np.sum(w * expit(mu + c + sd * z)) for c in class_offsets]))


def _coverage(seeds: int, reps: int, sd_seed: float, sd_clip: float, seed: int) -> tuple[float, float]:
    """How often the interval holds the truth: of system A's macro accuracy, and of the paired difference A - B.
    Each repetition draws a new test set (clip difficulties, correlated between the two systems, as a clip hard
    for one model is hard for another) and new seeds (a seed's effect on each model), then each seed's 0/1 per
    clip."""
    rng = np.random.default_rng(seed)
    classes = np.linspace(-1.0, 1.5, 10)  # some scenes are harder than others
    offset = classes[LABELS]
    mu_a, mu_b, rho = 0.65, 0.5, 0.8
    sd = float(np.hypot(sd_clip, sd_seed))
    truth_a, truth_b = _truth(mu_a, classes, sd), _truth(mu_b, classes, sd)
    hits_a = hits_d = 0
    for _ in range(reps):
        z_a = rng.standard_normal(len(LABELS))
        z_b = rho * z_a + np.sqrt(1 - rho**2) * rng.standard_normal(len(LABELS))
        seed_a, seed_b = sd_seed * rng.standard_normal((2, seeds, 1))
        a = rng.random((seeds, len(LABELS))) < expit(mu_a + offset + sd_clip * z_a + seed_a)
        b = rng.random((seeds, len(LABELS))) < expit(mu_b + offset + sd_clip * z_b + seed_b)
        e = interval(a, LABELS)
        d = interval(a, LABELS, b)
        hits_a += e.lo <= truth_a <= e.hi
        hits_d += d.lo <= truth_a - truth_b <= d.hi
    return hits_a / reps, hits_d / reps


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize(
    "sd_seed, sd_clip",
    [(0.25, 1.5), (0.08, 1.5)],  # seeds swing a few points / about one; clips from easy to hard either way
    ids=["seeds-matter", "seeds-matter-little"],
)
def test_the_interval_covers_known_truths_95_percent_of_the_time(seeds, sd_seed, sd_clip):
    # 800 repetitions: a coverage of 95 % is measured within about +-1.5 points (2 standard errors)
    cover_a, cover_d = _coverage(seeds, 800, sd_seed, sd_clip, seed=seeds)
    assert 0.93 <= cover_a <= 0.97, cover_a
    assert 0.93 <= cover_d <= 0.97, cover_d


def test_a_bootstrap_over_three_seeds_would_not_cover():
    """The reason for the method: percentiles of a resampling of three seeds are far too narrow (the interval
    results.md printed before). Its coverage on the same simulation stays well below 95 %."""
    rng = np.random.default_rng(7)
    classes = np.linspace(-1.0, 1.5, 10)
    truth = _truth(0.5, classes, float(np.hypot(1.5, 0.25)))
    hits = 0
    for _ in range(300):
        z = rng.standard_normal(len(LABELS))
        a = rng.random((3, len(LABELS))) < expit(
            0.5 + classes[LABELS] + 1.5 * z + 0.25 * rng.standard_normal((3, 1))
        )
        per_seed = macro_accuracy(a, LABELS)
        boot = [per_seed[rng.integers(0, 3, 3)].mean() for _ in range(400)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        hits += lo <= truth <= hi
    assert hits / 300 < 0.85


def test_the_estimate_is_the_mean_macro_accuracy_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    correct = rng.random((3, 1000)) < np.linspace(0.5, 0.9, 10).repeat(100)
    e = interval(correct, LABELS)
    assert e.value == pytest.approx(macro_accuracy(correct, LABELS).mean())
    assert e.lo < e.value < e.hi and 0.01 < e.half_width < 0.1
    assert e.seeds == 3


def test_one_seed_covers_the_test_clips_only_and_gives_no_verdict():
    rng = np.random.default_rng(1)
    small = interval(rng.random((1, 100)) < 0.7, np.repeat(np.arange(10), 10))
    large = interval(rng.random((1, 2000)) < 0.7, np.repeat(np.arange(10), 200))
    assert large.half_width < small.half_width / 2  # more clips, narrower
    a = rng.random((1, 1000)) < 0.9
    b = rng.random((1, 1000)) < 0.3
    d = interval(a, LABELS, b)
    assert d.lo > 0 and d.seeds == 1
    assert not d.excludes_zero  # one trained model per system: nothing said about training in general


def test_seeds_that_disagree_widen_the_interval():
    """The same clips, the same mean; seeds that swing apart must widen it (a seeds part exists)."""
    rng = np.random.default_rng(3)
    base = rng.random(1000) < 0.7
    steady = np.stack([base, base, base])
    swing = steady.copy()
    swing[0, rng.random(1000) < 0.15] = True  # one seed much better, one much worse
    swing[2, rng.random(1000) < 0.15] = False
    assert interval(swing, LABELS).half_width > 2 * interval(steady, LABELS).half_width


def test_a_paired_difference_cancels_what_both_share():
    rng = np.random.default_rng(2)
    a = rng.random((3, 1000)) < 0.7
    same = interval(a, LABELS, a)
    assert same.value == 0 and same.half_width == 0
    b = a.copy()
    b[:, ::10] = ~b[:, ::10]  # b differs from a on one clip in ten
    d = interval(a, LABELS, b)
    assert d.value == pytest.approx((macro_accuracy(a, LABELS) - macro_accuracy(b, LABELS)).mean())
    unpaired = interval(a, LABELS).half_width + interval(b, LABELS).half_width
    assert d.half_width < unpaired / 2  # pairing removes the clips' shared difficulty


def test_shapes_must_match():
    with pytest.raises(ValueError):
        interval(np.ones((2, 10), bool), LABELS)
    with pytest.raises(ValueError):
        interval(np.ones((2, 1000), bool), LABELS, np.ones((3, 1000), bool))
