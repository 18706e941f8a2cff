"""--print-config: the resolved config of a profile, a config file and overrides, as YAML, then exit - on every
job and on `python -m asc_ray.train`, with no data or output dir and before Ray starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asc_ray.cli.jobs import run_stages
from asc_ray.config import choose_profile, load_config

ROOT = Path(__file__).resolve().parents[2]


def _expected(profile, overrides, config_file=None):
    d = load_config(profile, config_file, overrides).model_dump()
    d.pop("profile")
    return d


def test_the_pipeline_job_prints_the_resolved_config_and_exits(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("kd:\n  lam: 0.7\n")
    cmd = [sys.executable, str(ROOT / "jobs" / "full_pipeline.py"), "--profile", "smoke", "--config", str(f)]
    r = subprocess.run(
        [*cmd, "bcbl.epochs=3", "--print-config", "--epochs", "2"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    printed = yaml.safe_load(r.stdout)
    assert printed == _expected("smoke", ["bcbl.epochs=3", "train.epochs=2"], f)
    assert (
        printed["kd"]["lam"] == 0.7
        and printed["train"]["epochs"] == 2
        and printed["passt"]["size"] == "small"
    )
    assert "profile smoke" in r.stdout.splitlines()[0]
    assert "ray" not in r.stderr.lower()  # exited before Ray started


@pytest.mark.parametrize("stages", [("teachers",), ("logits",), ("students",), ("evaluate",)])
def test_every_stage_job_prints_it_too(stages, capsys):
    with pytest.raises(SystemExit) as e:
        run_stages(["--print-config", "kd.lam=0.3"], stages, "a stage")
    assert e.value.code == 0
    # no --profile: the one choose_profile picks here (smoke without a GPU)
    assert yaml.safe_load(capsys.readouterr().out) == _expected(choose_profile(None)[0], ["kd.lam=0.3"])


def test_training_one_model_prints_it_too(capsys):
    from asc_ray.train.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--print-config", "--profile", "smoke", "train.select=val"])
    assert e.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["select"] == "val"


def test_a_bad_override_is_refused_even_when_only_printing():
    cmd = [sys.executable, str(ROOT / "jobs" / "full_pipeline.py"), "--print-config", "bcbl.epoch=3"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "bcbl.epoch" in r.stderr and "fix:" in r.stderr, r.stderr
    assert r.stdout == ""
