"""One trained student for the serving tests: `python -m asc_ray.train` for one epoch on the synthetic set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # serving_helpers, also for tests/pipeline


@pytest.fixture(scope="session")
def student_unit(synth_dataset, tmp_path_factory) -> Path:
    """The unit folder of a `baseline` student (model.pt, model_fp16.pt, unit.json, result.json, ...)."""
    from serving_helpers import train_student

    root = tmp_path_factory.mktemp("student")
    return train_student(synth_dataset, root / "out")
