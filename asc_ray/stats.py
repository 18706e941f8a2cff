"""How sure a figure is: 95 % intervals of macro accuracy, and of the paired difference between two systems, over
seeds and test clips.

A system's figure at a split is the mean over its S seeds of the macro-averaged class accuracy on the N test clips.
It is uncertain for two reasons: another seed trains another model, and another test set of the same design (the
same number of clips per class) holds other clips. Write x[s, i] for seed s on clip i (1 if right, or for a paired
difference the difference of two systems' 0/1, the same seeds and clips): x = mu + a_i + b_s + e_si, with a clip
effect a (its difficulty), a seed effect b and what is left e. The estimate's variance has two parts:

- seeds: the sample variance of the S per-seed figures over S. It holds b and e (and not a: every seed shares the
  clips) - the part a bootstrap over three seeds underestimates badly (its percentile interval covers the truth
  about 73 % of the time at S = 3), and a t-quantile with S - 1 degrees of freedom is needed for;
- clips: the stratified variance (within each class, weighted 1/C) of the per-clip means over seeds, less what e
  already put in the seeds part (the mean within-clip variance over seeds / S), so that nothing counts twice.

The interval is value +- t * sqrt(seeds + clips), at the Welch-Satterthwaite degrees of freedom of that sum, with
the seeds part taken at its one-sided 75 % upper confidence bound for the degrees of freedom only: plain
Satterthwaite is liberal with 3 seeds (about 91 % coverage), because a seeds part estimated low by chance raises
the degrees of freedom and narrows the interval exactly when it is too narrow already. tests/science/test_stats.py simulates known truths (seed and clip variance both present) and checks that
it covers them 93-97 % of the time at 3 and at 5 seeds. With a single seed there is no seeds part: the interval is
conditional on that one trained model and covers the test clips only (`Estimate.seeds == 1`), and a paired
difference then says nothing about distillation in general (results.md shows no verdict for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95
DF_BOUND = (
    0.25  # the seeds part's degrees of freedom are computed at its (1 - DF_BOUND) upper confidence bound
)


@dataclass(frozen=True)
class Estimate:
    value: float  # on the data as it is (mean over seeds)
    lo: float  # 95 % interval
    hi: float
    seeds: int = 1  # how many seeds it rests on: 1 = the interval covers the test clips only

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        """A difference whose interval holds no 0: only then is a word like "significant" allowed, and only with
        more than one seed (one seed says nothing of training noise)."""
        return self.seeds > 1 and (self.lo > 0 or self.hi < 0)


def macro_accuracy(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Macro-averaged class accuracy of each row of `correct` [S, N] (bool: clip n right for seed s)."""
    classes = np.unique(labels)
    return np.mean([correct[:, labels == c].mean(axis=1) for c in classes], axis=0)


def _check(correct, labels, other) -> tuple[np.ndarray, np.ndarray]:
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels)
    if correct.ndim != 2 or correct.shape[1] != len(labels):
        raise ValueError(f"correct must be [seeds, {len(labels)} clips], got {correct.shape}")
    if other is not None and np.shape(other) != correct.shape:
        raise ValueError(
            f"a paired difference needs the same seeds and clips: {np.shape(other)} vs {correct.shape}"
        )
    x = correct.astype(float)
    if other is not None:
        x -= np.asarray(other, dtype=bool)
    return x, labels


def parts(x: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, int, int]:
    """(value, seeds part, clips part, seeds' degrees of freedom, clips' degrees of freedom) of x [S, N]."""
    classes = np.unique(labels)
    s, c = x.shape[0], len(classes)
    per_seed = np.mean([x[:, labels == k].mean(axis=1) for k in classes], axis=0)  # [S]
    seeds = float(per_seed.var(ddof=1) / s) if s > 1 else 0.0
    clips = 0.0
    for k in classes:
        xk = x[:, labels == k]
        n = xk.shape[1]
        if n < 2:
            continue
        between = xk.mean(axis=0).var(ddof=1)  # per-clip means over seeds
        within = xk.var(axis=0, ddof=1).mean() / s if s > 1 else 0.0  # e's share, already in `seeds`
        clips += max(0.0, between - within) / n / c**2
    return float(per_seed.mean()), seeds, clips, s - 1, len(labels) - c


def interval(
    correct: np.ndarray, labels: np.ndarray, other: np.ndarray | None = None, level: float = LEVEL
) -> Estimate:
    """Mean macro accuracy over seeds of `correct` [S, N], or with `other` [S, N] (the same seeds in the same
    order, the same clips) the mean paired difference correct - other, each with its interval (module doc)."""
    x, labels = _check(correct, labels, other)
    value, seeds, clips, df_seeds, df_clips = parts(x, labels)
    var = seeds + clips
    if var == 0.0:
        return Estimate(value, value, value, x.shape[0])
    if df_seeds > 0 and seeds > 0:
        seeds *= df_seeds / _scipy_stats.chi2.ppf(DF_BOUND, df_seeds)  # for df only (module doc)
    terms = [(v, df) for v, df in ((seeds, df_seeds), (clips, df_clips)) if v > 0 and df > 0]
    df = (seeds + clips) ** 2 / sum(v**2 / d for v, d in terms)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, df)) * var**0.5
    return Estimate(value, value - half, value + half, x.shape[0])
