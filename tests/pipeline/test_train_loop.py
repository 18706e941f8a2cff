"""The plain-PyTorch training loop (asc_ray.train): outputs, honest model selection, resume, bad checkpoints, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asc_ray.config import load_config
from asc_ray.errors import AscRayError
from asc_ray.export import read_dcase_output
from asc_ray.systems import get_system
from asc_ray.train import Trainer, prepare_data

ROOT = Path(__file__).resolve().parents[2]
TINY = ["bcbl.epochs=2", "bcbl.batch_size=16", "train.num_threads=1"]


def _trainer(ds_dir, out, system="baseline", overrides=()):
    cfg = load_config("smoke", None, [*TINY, *overrides])
    s = get_system(system)
    data = prepare_data(cfg, ds_dir, out, 100, s, progress=False)
    return Trainer(s, cfg, data, out / system, 100, log=lambda m: None)


def test_fit_selects_on_validation_only_and_writes_outputs(synth_dataset, tmp_path, monkeypatch):
    t = _trainer(synth_dataset, tmp_path)
    seen = []
    real = Trainer.evaluate

    def spy(self, files, state_dict=None):
        seen.append(("finish" if state_dict is not None else "fit", set(files)))
        return real(self, files, state_dict)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    (tmp_path / "baseline").mkdir()
    result = t.fit()
    val, test = set(t.data.val_files), set(t.data.test_files)
    assert not val & test and not val & set(t.data.train_files)
    during_fit = [f for when, f in seen if when == "fit"]
    assert during_fit and all(f == val for f in during_fit)  # selection never sees test
    assert [f for when, f in seen if when == "finish"] == [test]  # test once, for the report
    hist = [h["val_macro_acc"] for h in t.history]
    assert result["selected_epoch"] == int(np.argmax(hist)) + 1 and result["val_macro_acc"] == max(hist)
    out = tmp_path / "baseline"
    files, labels, probs = read_dcase_output(out / "output.csv")
    assert len(files) == len(test) and not files[0].startswith("audio/")
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert json.loads((out / "output.complexity.json").read_text())["params"] == 61148
    assert (out / "class_accuracy.png").stat().st_size > 1000 and (out / "model_fp16.pt").is_file()
    assert 0.0 <= result["test_macro_acc"] <= 1.0 and result["params"] == 61148


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(synth_dataset, tmp_path):
    full = _trainer(synth_dataset, tmp_path / "a")
    (tmp_path / "a" / "baseline").mkdir(parents=True)
    full.fit()

    class Stop(Exception):
        pass

    def stop_after_first(m, ckpt):
        raise Stop

    first = _trainer(synth_dataset, tmp_path / "b")
    (tmp_path / "b" / "baseline").mkdir(parents=True)
    with pytest.raises(Stop):
        first.fit(stop_after_first)
    resumed = _trainer(synth_dataset, tmp_path / "b")
    resumed.load_checkpoint(tmp_path / "b" / "baseline" / "checkpoint")
    assert resumed.epoch == 1
    resumed.fit()
    assert len(resumed.history) == 2
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k


def test_checkpoint_of_another_architecture_is_refused(synth_dataset, tmp_path):
    t24 = _trainer(synth_dataset, tmp_path, "bcbl24", ["bcbl.epochs=1"])
    (tmp_path / "bcbl24").mkdir()
    t24.fit()
    t32 = _trainer(synth_dataset, tmp_path, "baseline")
    with pytest.raises(AscRayError) as e:
        t32.load_checkpoint(tmp_path / "bcbl24" / "checkpoint")
    assert "checkpoint.pt" in str(e.value) and "--fresh" in str(e.value)


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "asc_ray.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_trains_one_model(synth_dataset, tmp_path):
    r = _cli(
        "--system",
        "baseline",
        "--data-dir",
        str(synth_dataset),
        "--split",
        "100",
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path),
        "--profile",
        "smoke",
        "bcbl.batch_size=16",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout and "test macro accuracy" in r.stdout
    res = json.loads((tmp_path / "split100" / "baseline" / "result.json").read_text())
    assert res["system"] == "baseline" and res["split"] == 100


def test_cli_kd_student_without_logits_says_what_to_do(synth_dataset, tmp_path):
    r = _cli(
        "--system",
        "kd_ensemble",
        "--data-dir",
        str(synth_dataset),
        "--split",
        "100",
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path),
        "--profile",
        "smoke",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "teachers_split100.parquet" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr


def test_cli_kd_student_trains_from_a_logits_table(synth_dataset, tmp_path):
    from asc_ray.data.tau import TauDataset
    from asc_ray.logits import write_logits_table

    ds = TauDataset.open(synth_dataset)
    files = ds.split_files(100)
    rng = np.random.default_rng(0)
    write_logits_table(
        tmp_path / "t.parquet",
        files,
        [ds.clips[f].scene_label for f in files],
        ds.devices(files),
        {"bcbl32_fms": rng.normal(size=(len(files), 10)), "passt_dir": rng.normal(size=(len(files), 10))},
    )
    r = _cli(
        "--system",
        "kd_ensemble",
        "--data-dir",
        str(synth_dataset),
        "--split",
        "100",
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path),
        "--profile",
        "smoke",
        "--logits",
        str(tmp_path / "t.parquet"),
        "bcbl.batch_size=16",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "split100" / "kd_ensemble" / "split_logits.npy").is_file()  # for tfs


@pytest.mark.slow
def test_a_32_bcbl_learns_the_synthetic_scenes(tmp_path):
    """A few epochs on the default synthetic set: clearly above chance (10 %)."""
    from asc_ray.data.synth import generate

    d = generate(tmp_path / "tau", seed=0)
    r = _cli(
        "--system",
        "baseline",
        "--data-dir",
        str(d),
        "--split",
        "100",
        "--epochs",
        "12",
        "--output-dir",
        str(tmp_path / "o"),
        "--profile",
        "smoke",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "split100" / "baseline" / "result.json").read_text())
    assert res["test_macro_acc"] > 0.25, res["test_macro_acc"]
