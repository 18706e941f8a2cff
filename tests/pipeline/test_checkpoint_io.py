"""Checkpoint I/O (issue 12): the resumable state every `train.checkpoint_every` epochs and at the end, best.pt
written only when the best model changed (else a hard link: no bytes), and `checkpoint_every` outside every
resume key. A real Trainer on the synthetic dataset, a few tiny epochs, no Ray."""

from __future__ import annotations

import pytest
import torch

from asc_ray.config import load_config
from asc_ray.pipeline.keys import unit_key
from asc_ray.systems import SYSTEMS
from asc_ray.train import is_save_epoch, link_or_copy, tree_bytes


@pytest.mark.parametrize(
    ("epochs", "every", "saved"), [(3, 1, [1, 2, 3]), (5, 2, [2, 4, 5]), (5, 5, [5]), (3, 10, [3])]
)
def test_save_epochs(epochs, every, saved):
    assert [e for e in range(1, epochs + 1) if is_save_epoch(e, epochs, every)] == saved


def test_checkpoint_every_is_in_no_resume_key():
    a = load_config("full", None, ["train.checkpoint_every=1"])
    b = load_config("full", None, ["train.checkpoint_every=7"])
    for s in SYSTEMS.values():
        assert unit_key(a, s, 25, "data") == unit_key(b, s, 25, "data"), s.name


def test_link_or_copy_replaces_without_touching_the_shared_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    link_or_copy(a, b)
    assert b.read_bytes() == b"one" and tree_bytes(tmp_path) == 3  # linked: the bytes exist once
    link_or_copy(a, b)  # onto itself (already a link to a): no error, nothing truncated
    c = tmp_path / "c"
    c.write_bytes(b"two")
    link_or_copy(c, b)
    assert a.read_bytes() == b"one" and b.read_bytes() == b"two"


def test_fit_checkpoints_every_n_epochs_and_best_only_when_it_improves(make_trainer, tmp_path):
    t = make_trainer(
        split=50,
        out=tmp_path / "unit",
        overrides=["bcbl.epochs=5", "train.checkpoint_every=2", "train.select=val"],
    )
    weights, reports = {}, []

    def report(m, ckpt):
        weights[m["epoch"]] = {k: v.clone() for k, v in t.model.state_dict().items()}
        best = t.out_dir / "checkpoint" / "best.pt"
        reports.append((m["epoch"], ckpt is not None, t.best["epoch"], best.stat().st_ino if ckpt else None))

    fitted = t.fit(report)
    assert [(e, c) for e, c, _, _ in reports] == [(1, False), (2, True), (3, False), (4, True), (5, True)]
    saved = [(e, b, ino) for e, c, b, ino in reports if c]
    for (_, b0, i0), (_, b1, i1) in zip(saved, saved[1:], strict=False):
        assert (i0 == i1) == (b0 == b1)  # a new best.pt only when the best epoch changed, else the same file
    # best.pt holds the selected epoch's weights, even when that epoch was not a checkpoint epoch
    best = torch.load(t.out_dir / "checkpoint" / "best.pt", weights_only=True)
    sel = fitted.selected_epoch
    assert fitted.weights == t.out_dir / "checkpoint" / "best.pt"
    assert all(torch.equal(best[k], weights[sel][k]) for k in best)
    state = torch.load(t.out_dir / "checkpoint" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 5 and state["best"]["epoch"] == sel - 1
