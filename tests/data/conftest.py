"""Fixtures of the data-layer tests: a throw-away dataset to break."""

from __future__ import annotations

from pathlib import Path

import pytest

from asc_ray.data.synth import generate


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """30 clips (3 per scene) of our own: tests may corrupt its files."""
    return generate(tmp_path / "tau", clips_per_class=3, seed=1)
