from collections import Counter

import pytest
from data_helpers import write_tsv

from asc_ray.data.holdout import split_holdout
from asc_ray.data.tau import SCENES, TauDataset
from asc_ray.errors import AscRayError


@pytest.fixture
def many_recordings(tmp_path):
    """meta.csv only (the holdout needs no audio): 10 scenes x 20 recordings of 2..8 clips; 'tram' has one."""
    rows = []
    for s, scene in enumerate(SCENES):
        n_rec = 1 if scene == "tram" else 20
        for r in range(n_rec):
            loc = 100 * s + r
            for j in range(2 + (r * 7 + s) % 7):
                rows.append((f"audio/{scene}-lyon-{loc}-0-{j}-a.wav", scene, f"lyon-{loc}", "a"))
    write_tsv(tmp_path / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), rows)
    return TauDataset.open(tmp_path)


def test_grouped_stratified_disjoint(many_recordings):
    ds = many_recordings
    files = sorted(ds.clips)
    train, val = split_holdout(ds, files, fraction=0.2, seed=3)
    assert not set(train) & set(val) and sorted(train + val) == files
    assert train == [f for f in files if f in set(train)]  # order of `files` kept
    assert not {ds.clips[f].identifier for f in train} & {ds.clips[f].identifier for f in val}
    n_all = Counter(ds.clips[f].scene_label for f in files)
    n_val = Counter(ds.clips[f].scene_label for f in val)
    for scene in SCENES:
        if scene == "tram":
            assert n_val[scene] == 0  # a single recording stays in train
            continue
        assert abs(n_val[scene] / n_all[scene] - 0.2) < 0.06, scene  # about the fraction, per scene
    assert set(ds.clips[f].scene_label for f in train) == set(SCENES)


def test_deterministic_for_a_seed(many_recordings):
    files = sorted(many_recordings.clips)
    assert split_holdout(many_recordings, files, 0.1, seed=0) == split_holdout(
        many_recordings, files, 0.1, seed=0
    )
    assert split_holdout(many_recordings, files, 0.1, seed=0) != split_holdout(
        many_recordings, files, 0.1, seed=1
    )


def test_small_split_keeps_a_recording_in_train(synth_dataset):
    ds = TauDataset.open(synth_dataset)
    files = ds.split_files(25)
    train, val = split_holdout(ds, files, fraction=0.5, seed=0)
    assert set(ds.labels(train).tolist()) == set(range(10))
    assert not {ds.clips[f].identifier for f in train} & {ds.clips[f].identifier for f in val}
    assert split_holdout(ds, files, fraction=0.0) == (files, [])


def test_bad_fraction_and_unknown_file(many_recordings):
    with pytest.raises(AscRayError, match="fraction"):
        split_holdout(many_recordings, sorted(many_recordings.clips), fraction=1.0)
    with pytest.raises(AscRayError, match="not in meta.csv"):
        split_holdout(many_recordings, ["audio/nope.wav"])


def test_a_holdout_of_too_few_scenes_is_none(many_recordings):
    """Issue 10: a tiny split where most scenes have one recording would validate on one or two scenes, and
    that picked an early epoch suiting those scenes alone (split 10 of the synthetic set: test at chance).
    Fewer than half of the scenes in validation -> no holdout (the trainer then keeps the last epoch)."""
    ds = many_recordings
    by_scene = {}
    for f in sorted(ds.clips):
        by_scene.setdefault(ds.clips[f].scene_label, {}).setdefault(ds.clips[f].identifier, []).append(f)
    # one recording for every scene but airport and bus (which keep three): only they could be validated
    files = [
        f
        for s, recs in by_scene.items()
        for r in sorted(recs)[: 3 if s in ("airport", "bus") else 1]
        for f in recs[r]
    ]
    assert split_holdout(ds, files, 0.3, seed=0) == (files, [])
    # six scenes with several recordings: validation covers them, the rest train
    files = [
        f
        for s, recs in by_scene.items()
        for r in sorted(recs)[: 3 if s in SCENES[:6] else 1]
        for f in recs[r]
    ]
    train, val = split_holdout(ds, files, 0.3, seed=0)
    assert {ds.clips[f].scene_label for f in val} == set(SCENES[:6]) and len(train) + len(val) == len(files)
