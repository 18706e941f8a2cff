"""Train / validation holdout inside a split's training files.

DCASE rule: test files never pick a checkpoint, so validation comes out of the split itself. Clips of one
recording (identifier = city-location) are near-duplicates, so whole recordings go to one side; per scene,
recordings are drawn until about `fraction` of that scene's clips are in validation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from asc_ray.data.tau import SCENE_INDEX, SCENES, TauDataset
from asc_ray.errors import AscRayError

# A holdout must cover at least this share of the split's scenes to select an epoch; else there is none
MIN_SCENE_SHARE = 0.5


def split_holdout(
    ds: TauDataset, files: Sequence[str], fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, val), both in the order of `files`: disjoint, union == files, no recording on both sides.

    Per scene: a random (seeded) order of its recordings; each is moved to validation when that brings the
    scene's validation share closer to `fraction`. At least one recording of each scene stays in train; a
    scene with a single recording stays in train entirely; a scene with several gets at least one in
    validation (its smallest) when fraction > 0, unless that would take more than half of the scene. When the
    holdout would cover fewer than half of the split's scenes, there is none: (files, []).
    """
    if not 0.0 <= fraction < 1.0:
        raise AscRayError(
            f"holdout fraction must be in [0, 1), got {fraction!r}",
            fix="use e.g. 0.1 (10 % of each scene's clips for validation)",
        )
    files = list(files)
    if len(set(files)) != len(files):
        raise AscRayError(
            "the file list given to the holdout has duplicates", fix="pass each training file once"
        )

    # recordings: identifier -> files; a recording belongs to its majority scene (TAU: its only scene)
    rec_files: dict[str, list[str]] = defaultdict(list)
    rec_scenes: dict[str, Counter] = defaultdict(Counter)
    for f in files:
        clip = ds._clip(f)  # unknown file -> AscRayError
        rec_files[clip.identifier].append(f)
        rec_scenes[clip.identifier][clip.scene_label] += 1
    by_scene: dict[str, list[str]] = defaultdict(list)
    for rec in sorted(rec_files):
        scene = max(rec_scenes[rec].items(), key=lambda kv: (kv[1], -SCENE_INDEX[kv[0]]))[0]
        by_scene[scene].append(rec)

    val_recs: set[str] = set()
    for scene in SCENES:
        recs = by_scene.get(scene, [])
        if len(recs) < 2 or fraction == 0.0:
            continue
        rng = np.random.default_rng([seed, SCENE_INDEX[scene]])  # per-scene stream: scenes independent
        recs = [recs[i] for i in rng.permutation(len(recs))]
        sizes = {r: len(rec_files[r]) for r in recs}
        target = fraction * sum(sizes.values())
        chosen, n_val = [], 0
        for r in recs:
            if len(chosen) == len(recs) - 1:
                break  # keep >= 1 recording in train
            if abs(n_val + sizes[r] - target) < abs(n_val - target):
                chosen.append(r)
                n_val += sizes[r]
        smallest = min(recs, key=lambda r: sizes[r])
        if not chosen and 2 * sizes[smallest] <= sum(sizes.values()):
            chosen = [smallest]  # every recording overshoots: still validate the scene, train keeps >= half
        val_recs.update(chosen)

    held = {scene for scene in by_scene if set(by_scene[scene]) & val_recs}
    if len(held) < MIN_SCENE_SHARE * len(by_scene):
        # a holdout of one or two scenes (a tiny split: most scenes have one recording) would pick the epoch
        # that suits those scenes only: no holdout then, and the trainer keeps the last epoch
        return files, []
    val = [f for f in files if ds.clips[f].identifier in val_recs]
    train = [f for f in files if ds.clips[f].identifier not in val_recs]
    return train, val
