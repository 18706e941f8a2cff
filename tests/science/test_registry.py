"""The model registry: a new architecture is a module, one ARCHITECTURES entry, its config section and its systems,
and then trains through the same code the pipeline runs (Trainer + finish_unit, here via `python -m
asc_ray.train`). No system silently takes another architecture's settings."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from asc_ray import models, systems
from asc_ray.errors import AscRayError
from asc_ray.layout import Layout, UnitRef
from asc_ray.models import ARCHITECTURES, Architecture
from asc_ray.optim import adamw_cosine
from asc_ray.predict import load_classifier
from asc_ray.systems import System


class Toy(nn.Module):
    """A log-mel in, 10 logits out: the smallest network that learns something."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def toy_registered(monkeypatch):
    # section "bcbl": its epochs, batch size, lr and warm-up; a new section would be one more key in full.yaml
    toy = Architecture(
        "bcbl", ARCHITECTURES["bcbl32"].settings, lambda cfg, m, p: Toy(), adamw_cosine, 0.1, False
    )
    monkeypatch.setitem(ARCHITECTURES, "toy", toy)
    teacher = System("toy_fms", "teacher", "toy", "mel32k", fms=True, dir=False)
    monkeypatch.setitem(systems.SYSTEMS, teacher.name, teacher)
    return teacher


def test_a_registered_architecture_trains_through_the_training_entry_point(
    toy_registered, synth_dataset, tmp_path
):
    from asc_ray.train.__main__ import main

    out = tmp_path / "out"
    argv = [
        "--system",
        "toy_fms",
        "--split",
        "100",
        "--data-dir",
        str(synth_dataset),
        "--output-dir",
        str(out),
    ]
    assert main([*argv, "--profile", "smoke", "--epochs", "1"]) == 0
    unit = Layout(out).unit_dir(UnitRef("toy_fms", 100))
    rec = json.loads((unit / "result.json").read_text())
    assert rec["system"] == "toy_fms" and rec["role"] == "teacher" and rec["selected_epoch"] == 1
    assert 0.0 <= rec["test_macro_acc"] <= 1.0 and rec["params"] == sum(p.numel() for p in Toy().parameters())
    # a teacher's logits over its split feed the ensemble; the unit folder rebuilds the toy for predict
    assert (unit / "split_logits.npy").is_file() and (unit / "test_logits.npy").is_file()
    assert json.loads((unit / "unit.json").read_text())["model"] == "toy"
    assert isinstance(load_classifier(str(unit)).model, Toy)


def test_an_unregistered_architecture_is_an_error_not_a_default():
    ghost = System("ghost", "teacher", "resnet", "mel32k", fms=False, dir=False)
    with pytest.raises(AscRayError) as e:
        ghost.family  # noqa: B018 - the config section it would train by
    assert "resnet" in str(e.value) and "ARCHITECTURES" in e.value.fix
    with pytest.raises(AscRayError):
        models.build_model("resnet", None)


def test_every_system_names_a_registered_architecture_and_its_section_exists():
    from asc_ray.config import load_config

    cfg = load_config("full")
    for s in systems.SYSTEMS.values():
        arch = models.get_architecture(s.model)
        assert isinstance(getattr(cfg, arch.section), arch.settings), s.name
        assert s.family == arch.section
    # the same entry gives the scheduler's cost and the default memory format
    assert ARCHITECTURES["passt"].cost > ARCHITECTURES["bcbl32"].cost > ARCHITECTURES["bcbl24"].cost
    assert replace(ARCHITECTURES["bcbl32"], cost=2.0).cost == 2.0  # entries are plain data


# ------------------------------------------------------------ a new architecture and loss, end to end
TOY_YAML = """
toy:                       # the toy architecture's own section
  epochs: 2
  batch_size: 16
  lr: 0.01
  weight_decay: 0.0
  warmup_steps: 0
toyloss:                   # the toy loss's settings
  weight: 0.5
"""


@pytest.fixture
def toy_student(monkeypatch, tmp_path):
    """What adding a student architecture and a loss variant touches, and nothing else: an ARCHITECTURES entry
    (asc_ray/models/__init__.py, with its settings section), a LOSSES entry (asc_ray/losses.py, with its
    settings section), their sections in configs/full.yaml, and a System (asc_ray/systems.py)."""
    from asc_ray import config, losses, sections
    from asc_ray.schema import Float, Int, Section, trains

    class ToySettings(Section):
        epochs: Int = trains(ge=1)
        batch_size: Int = trains(ge=1)
        lr: Float = trains(gt=0)
        weight_decay: Float = trains(ge=0)
        warmup_steps: Int = trains(ge=0)

    class ToyLossSettings(Section):
        weight: Float = trains(ge=0, le=1)

    def toy_loss(z, y, zt, cfg):
        return cfg.toyloss.weight * losses.soft_cross_entropy(z, y)

    arch = Architecture("toy", ToySettings, lambda cfg, m, p: Toy(), adamw_cosine, 0.1, False)
    monkeypatch.setitem(ARCHITECTURES, "toy", arch)
    monkeypatch.setitem(losses.LOSSES, "toyloss", losses.Loss(toy_loss, ToyLossSettings))
    student = System("toy_student", "student", "toy", "mel32k", fms=True, dir=False, loss="toyloss")
    monkeypatch.setitem(systems.SYSTEMS, student.name, student)
    profiles = tmp_path / "configs"
    profiles.mkdir()
    (profiles / "full.yaml").write_text((config.CONFIG_DIR / "full.yaml").read_text() + TOY_YAML)
    (profiles / "smoke.yaml").write_text((config.CONFIG_DIR / "smoke.yaml").read_text())
    monkeypatch.setattr(config, "CONFIG_DIR", profiles)
    monkeypatch.setattr(sections, "Config", sections.schema())  # as the package builds it at import
    return student


def test_a_new_architecture_and_loss_run_through_the_graph_the_keys_and_a_training(
    toy_student, synth_dataset, shared_cache, tmp_path
):
    from helpers.training import new_trainer

    from asc_ray.config import load_config
    from asc_ray.layout import UnitRef
    from asc_ray.pipeline.graph import build_graph
    from asc_ray.pipeline.keys import Keys, unit_config

    cfg = load_config("smoke", None, ["students.systems=[baseline,toy_student]"])
    graph = build_graph(cfg.students.systems, [100], cfg.students.seeds)
    unit = UnitRef("toy_student", 100, 0)
    assert graph[unit] == [] and unit.stage == "students"

    def key(*overrides):
        c = load_config("smoke", None, ["students.systems=[baseline,toy_student]", *overrides])
        return Keys(graph, c, {100: "data"})

    # its own sections are in its key (declared trains()), another loss's and family's are not
    read = unit_config(cfg, toy_student)
    assert {"toy.lr", "toyloss.weight", "augment.fms_p"} <= set(read) and "kd.lam" not in read
    assert not any(k.startswith("bcbl.") for k in read)
    k0 = key()
    assert key("toyloss.weight=0.25")[unit] != k0[unit] and key("kd.lam=0.1")[unit] == k0[unit]
    assert key("toy.lr=0.02")[UnitRef("baseline", 100, 0)] == k0[UnitRef("baseline", 100, 0)]
    # a short training, as a unit runs it
    t = new_trainer(synth_dataset, tmp_path, "toy_student", 100, ["toy.epochs=1"], cache_dir=shared_cache)
    fitted = t.fit()
    assert isinstance(t.model, Toy) and t.epochs == 1 and fitted.selected_epoch == 1
    assert 0 < t.history[0]["train_loss"] < 0.5 * 2.5  # weight 0.5 x a ten-class cross-entropy (~2.3)
