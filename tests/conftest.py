"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the TAU22 layout (200 clips, 10 scenes, splits, test.csv, irs/).

    Shared by the whole session: treat it as read-only (copy it, or make your own with
    asc_ray.data.synth.generate, before changing files).
    """
    from asc_ray.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "tau", clips_per_class=20, seed=0)
