"""One trained student for the serving tests: a `baseline` unit folder, trained one epoch in this process the
way `python -m asc_ray.train` trains it (the same Trainer and finish_unit)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def student_unit(synth_dataset, tmp_path_factory) -> Path:
    """The unit folder of a `baseline` student (model.pt, model_fp16.pt, unit.json, result.json, ...), laid
    out as `python -m asc_ray.train --output-dir OUT` lays it out: OUT/split100/baseline."""
    from helpers.training import new_trainer

    from asc_ray.train import finish_unit

    root = tmp_path_factory.mktemp("student")
    out = root / "out" / "split100" / "baseline"
    t = new_trainer(synth_dataset, root / "out", "baseline", 100, ["train.epochs=1"], out)
    finish_unit(t.system, t.cfg, 100, t.data, out, t.fit(), log=t.logs.append)
    return out
