"""The pretraining corpus (asc_ray/data/corpus.py) and PaSST's pretraining on it (asc_ray/train/pretrain.py): what
stands in for AudioSet where there is no checkpoint, and the teachers that fine-tune from it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from helpers.training import new_trainer

from asc_ray.config import load_config
from asc_ray.data.corpus import generate_corpus, read_corpus
from asc_ray.data.tau import SCENES, TauDataset
from asc_ray.errors import AscRayError
from asc_ray.models.passt import HEAD_KEYS
from asc_ray.train.pretrain import RECORD, WEIGHTS, pretrain, pretrained_models

TINY_PRETRAIN_UNIT = [
    "pretrain.corpus=synthetic",
    "pretrain.classes=3",
    "pretrain.clips_per_class=10",
    "pretrain.epochs=2",
    "pretrain.batch_size=8",
]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny corpus and a PaSST pretrained on it for two epochs: (config, corpus, unit folder, record)."""
    root = tmp_path_factory.mktemp("pretrain")
    cfg = load_config("smoke", None, TINY_PRETRAIN_UNIT)
    rec = pretrain(cfg, root / "corpus", root / "unit", key="k1", log=lambda m: None)
    return cfg, root / "corpus", root / "unit", rec


def test_the_smoke_profile_pretrains_passt_and_an_audioset_checkpoint_makes_it_a_no_op():
    assert pretrained_models(load_config("smoke")) == ("passt",)
    assert pretrained_models(load_config("full")) == ()  # AudioSet's checkpoint
    assert pretrained_models(load_config("smoke", None, ["passt.pretrained=true", "passt.size=full"])) == ()
    assert pretrained_models(load_config("smoke", None, ["pretrain.corpus=none"])) == ()


def test_the_corpus_holds_its_own_classes_and_none_of_a_tau_sets_clips(pretrained, synth_dataset):
    _, corpus, _, _ = pretrained
    files, labels = read_corpus(corpus)
    assert len(files) == 30 and sorted(set(labels)) == ["class000", "class001", "class002"]
    assert not set(labels) & set(SCENES)  # its label space is not the ten scenes
    tau = TauDataset.open(synth_dataset)
    every_tau_clip = set(tau.test_files()) | {f for s in (5, 100) for f in tau.split_files(s)}
    assert not {Path(f).name for f in files} & {Path(f).name for f in every_tau_clip}
    assert all((corpus / f).is_file() for f in files)


def test_the_same_arguments_give_the_same_bytes_and_a_finished_corpus_is_kept(tmp_path, pretrained):
    _, corpus, _, _ = pretrained
    again = generate_corpus(tmp_path / "again", classes=3, clips_per_class=10, seed=0)
    assert _digest(again) == _digest(corpus)
    other = generate_corpus(tmp_path / "other", classes=3, clips_per_class=10, seed=1)
    assert _digest(other) != _digest(corpus)
    stamp = (again / "COMPLETE").stat().st_mtime_ns
    generate_corpus(again, classes=3, clips_per_class=10, seed=0)  # made already: nothing is written
    assert (again / "COMPLETE").stat().st_mtime_ns == stamp
    with pytest.raises(AscRayError, match="not empty"):
        generate_corpus(again, classes=4, clips_per_class=10, seed=0)


def test_pretraining_writes_its_weights_and_record_and_resumes_without_retraining(pretrained):
    cfg, corpus, unit, rec = pretrained
    assert rec["key"] == "k1" and rec["epochs"] == 2 and len(rec["history"]) == 2
    assert (unit / WEIGHTS).is_file() and (unit / RECORD).is_file()
    state = torch.load(unit / WEIGHTS, weights_only=True)
    assert state["net.head.1.weight"].shape[0] == 3  # its head: the corpus's classes
    lines: list[str] = []
    again = pretrain(cfg, corpus, unit, key="k1", log=lines.append)
    assert lines == ["[pretrain passt] resumed after epoch 2"]  # no epoch trained again
    assert again["history"] == rec["history"]


def test_a_passt_teacher_starts_from_the_pretrained_weights_with_a_new_head(
    pretrained, synth_dataset, tmp_path
):
    """What fine-tuning means: every tensor but the head equals the pretrained one before the first step, and
    after the first epoch the weights are still near them (far nearer than a teacher from scratch)."""
    _, _, unit, _ = pretrained
    state = torch.load(unit / WEIGHTS, weights_only=True)
    over = [*TINY_PRETRAIN_UNIT, "passt.epochs=1", "passt.batch_size=16"]
    t = new_trainer(synth_dataset, tmp_path, "passt_fms", 100, over, init_weights=unit / WEIGHTS)
    scratch = new_trainer(synth_dataset, tmp_path, "passt_fms", 100, over, out=tmp_path / "scratch")
    start = t.model.state_dict()
    body = [k for k in state if k.removeprefix("net.") not in HEAD_KEYS]
    assert body and all(torch.equal(start[k], state[k]) for k in body)
    assert start["net.head.1.weight"].shape[0] == len(SCENES)  # a new head for the ten scenes
    assert not all(torch.equal(scratch.model.state_dict()[k], state[k]) for k in body)

    t.fit()
    after = t.model.state_dict()

    def dist(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in body)

    assert 0 < dist(after, state) < dist(scratch.model.state_dict(), state) / 4
