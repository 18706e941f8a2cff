"""One trained student for the serving tests: a `baseline` unit folder, trained one epoch in this process the
way `python -m asc_ray.train` trains it (the same Trainer and finish_unit)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def student_unit(synth_dataset, tmp_path_factory) -> Path:
    """The unit folder of a `baseline` student (model.pt, model_fp16.pt, unit.json, result.json, ...), laid
    out as `python -m asc_ray.train --output-dir OUT` lays it out: OUT/split100/baseline."""
    from asc_ray.config import load_config
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, finish_unit, prepare_data

    root = tmp_path_factory.mktemp("student")
    cfg = load_config("smoke", None, ["train.epochs=1", "bcbl.batch_size=16", "train.num_threads=1"])
    system = get_system("baseline")
    out = root / "out" / "split100" / "baseline"
    data = prepare_data(cfg, synth_dataset, root / "out", 100, system, progress=False)
    fitted = Trainer(system, cfg, data, out, 100, log=lambda m: None).fit()
    finish_unit(system, cfg, 100, data, out, fitted, log=lambda m: None)
    return out
