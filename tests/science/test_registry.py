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
