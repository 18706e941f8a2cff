"""How sure a figure is: 95 % intervals of macro accuracy, and of the difference between two systems, by a
paired bootstrap over seeds and test clips.

A system's figure at a split is the mean over its seeds of the macro-averaged class accuracy on the test clips.
Each bootstrap resample draws the seeds with replacement and the test clips with replacement within their class
(every class keeps its number of clips, as the test set was designed); the same draws serve both systems of a
difference, so that what they share (the seed's initial weights and batch order, the clips' difficulty) cancels.
The interval is the 2.5 and 97.5 percentiles of the resampled statistic (2,000 resamples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    value: float  # on the data as it is (mean over seeds)
    lo: float  # 95 % interval
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def macro_accuracy(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Macro-averaged class accuracy of each row of `correct` [S, N] (bool: clip n right for seed s)."""
    classes = np.unique(labels)
    return np.mean([correct[:, labels == c].mean(axis=1) for c in classes], axis=0)


def _draws(labels: np.ndarray, n_seeds: int, resamples: int, seed: int):
    """(seed rows, clip columns) of each resample: seeds with replacement, clips with replacement in each class."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(resamples):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = np.concatenate([rng.choice(idx, len(idx)) for idx in by_class])
        yield rows, cols


def bootstrap(
    correct: np.ndarray,
    labels: np.ndarray,
    other: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Mean macro accuracy over seeds of `correct` [S, N], or with `other` [S, N] (the same seeds in the same
    order, the same clips) the mean paired difference correct - other, each with its 95 % interval."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels)
    if correct.ndim != 2 or correct.shape[1] != len(labels):
        raise ValueError(f"correct must be [seeds, {len(labels)} clips], got {correct.shape}")
    if other is not None and np.shape(other) != correct.shape:
        raise ValueError(
            f"a paired difference needs the same seeds and clips: {np.shape(other)} vs {correct.shape}"
        )

    diff = correct.astype(np.int8) - (0 if other is None else np.asarray(other, dtype=bool).astype(np.int8))
    sizes = np.array([np.sum(labels == c) for c in np.unique(labels)])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def stat(rows, cols):  # cols come grouped by class (_draws): per-class means by reduceat
        per_class = np.add.reduceat(diff[np.ix_(rows, cols)], starts, axis=1) / sizes
        return float(per_class.mean())

    in_order = np.concatenate([np.flatnonzero(labels == c) for c in np.unique(labels)])
    values = [stat(r, c) for r, c in _draws(labels, correct.shape[0], resamples, seed)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return Estimate(stat(np.arange(correct.shape[0]), in_order), float(lo), float(hi))
