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
TINY = [
    "bcbl.epochs=2",
    "teachers.bcbl_epochs=0",
    "bcbl.batch_size=16",
    "train.num_threads=1",
    "train.min_steps=0",
]


def _trainer(ds_dir, out, system="baseline", overrides=()):
    cfg = load_config("smoke", None, [*TINY, *overrides])
    s = get_system(system)
    data = prepare_data(cfg, ds_dir, out, 100, s, progress=False)
    return Trainer(s, cfg, data, out / system, 100, log=lambda m: None)


def test_select_last_trains_on_the_whole_split_and_keeps_the_last_epoch(synth_dataset, tmp_path):
    """Nothing reads a holdout when the last epoch is kept (the smoke profile): the whole split trains."""
    t = _trainer(synth_dataset, tmp_path, overrides=["train.select=last"])
    assert t.data.val_files == [] and sorted(t.data.train_files) == sorted(t.data.ds.split_files(100))
    (tmp_path / "baseline").mkdir()
    result = t.fit()
    assert result["selected_epoch"] == 2 and result["selected_on"] == "last"


def test_fit_selects_on_validation_only_and_writes_outputs(synth_dataset, tmp_path, monkeypatch):
    t = _trainer(synth_dataset, tmp_path, overrides=["train.select=val"])
    seen = []
    real = Trainer.evaluate

    def spy(self, files, state_dict=None, model=None):
        seen.append(("fit" if state_dict is None and model is None else "finish", set(files)))
        return real(self, files, state_dict, model)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    (tmp_path / "baseline").mkdir()
    result = t.fit()
    val, test = set(t.data.val_files), set(t.data.test_files)
    assert not val & test and not val & set(t.data.train_files)
    during_fit = [f for when, f in seen if when == "fit"]
    assert during_fit and all(f == val for f in during_fit)  # selection never sees test
    # test only for the report: the selected weights in fp32, then the deployed fp16 export
    assert [f for when, f in seen if when == "finish"] == [test, test]
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


# --- issue 10: what Table 3 depends on ---------------------------------------------------------------
def test_each_unit_trains_with_its_own_stable_seed(synth_dataset, tmp_path):
    """Independent teachers: three bcbl32 teachers of a split start from different weights."""
    from asc_ray.train import unit_seed

    names = ("bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir")
    trainers = [_trainer(synth_dataset, tmp_path, n) for n in names]
    assert len({t.seed for t in trainers}) == 3
    assert [t.seed for t in trainers] == [unit_seed(0, n, 100) for n in names]  # stable run to run
    assert unit_seed(0, "bcbl32_fms", 50) != unit_seed(0, "bcbl32_fms", 100)
    w = [t.model.state_dict()["in_c.0.0.weight"] for t in trainers]  # the first convolution
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    again = _trainer(synth_dataset, tmp_path, "bcbl32_fms")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            again.model.state_dict().values(), trainers[0].model.state_dict().values(), strict=True
        )
    )


def test_data_parallel_ranks_share_weights_but_draw_their_own_augmentations(synth_dataset, tmp_path):
    cfg = load_config("smoke", None, TINY)
    s = get_system("bcbl32_fms_dir")  # mixup + FMS + DIR
    data = prepare_data(cfg, synth_dataset, tmp_path, 100, s, progress=False)
    ranks = [Trainer(s, cfg, data, tmp_path / f"r{r}", 100, rank=r, world_size=2) for r in (0, 1)]
    for a, b in zip(ranks[0].model.state_dict().values(), ranks[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # DDP would sync them anyway: start identical
    batch = next(iter(ranks[0].batches))
    x0, y0, _ = ranks[0].prepare_inputs(batch, ranks[0].epoch_generator())
    x1, y1, _ = ranks[1].prepare_inputs(batch, ranks[1].epoch_generator())
    assert not torch.equal(y0, y1) and not torch.allclose(x0, x1)  # different mixup partners / lambdas
    x0b, y0b, _ = ranks[0].prepare_inputs(batch, ranks[0].epoch_generator())
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)  # the same rank and epoch repeat themselves


def test_baseline_is_the_official_recipe_and_says_so_in_its_params(synth_dataset, tmp_path):
    from asc_ray.train import build_optimizer, unit_params

    cfg = load_config("full", None, ["train.num_threads=1"])
    got = {}
    for name in ("baseline", "bcbl24"):
        s = get_system(name)
        data = prepare_data(cfg, synth_dataset, tmp_path, 100, s, progress=False)
        t = Trainer(s, cfg, data, tmp_path / name, 100, log=lambda m: None)
        opt, _ = build_optimizer(s, cfg, t.model, steps_per_epoch=1000)
        got[name] = (unit_params(t), opt.param_groups[0]["lr"], t.roll)
    params, lr0, roll = got["baseline"]
    assert params["warmup_steps"] == 2000 and params["roll_s"] == 0.1  # readable in its MLflow params
    assert lr0 == pytest.approx(0.005 / 2000) and roll == 3200  # 0.1 s at 32 kHz
    params, lr0, roll = got["bcbl24"]  # one of the report's own N-BCBL models
    assert params["warmup_steps"] == 100 and params["roll_s"] == 0.0
    assert lr0 == pytest.approx(0.005 / 100) and roll == 0
    assert got["baseline"][0]["input_shape"] == "1x256x65" and got["baseline"][0]["sample_rate"] == 32000


def test_the_reported_test_accuracy_is_the_fp16_models(synth_dataset, tmp_path, monkeypatch):
    from asc_ray import outputs
    from asc_ray.metrics import evaluate
    from asc_ray.predict import load_trained

    logs = []
    monkeypatch.setattr(outputs, "FP16_WARN_DROP", -1.0)  # any drop at all warns: see that the warning fires
    t = _trainer(synth_dataset, tmp_path)
    t.log = logs.append
    (tmp_path / "baseline").mkdir()
    result = t.fit()
    out = tmp_path / "baseline"
    fp16 = load_trained(t.system, t.cfg, out / "model_fp16.pt")
    assert next(fp16.parameters()).dtype == torch.float16
    logits16 = t.predict(t.data.test_files, model=fp16)
    res16 = evaluate(logits16, t.data.ds.labels(t.data.test_files), t.data.ds.devices(t.data.test_files))
    assert result["test_macro_acc"] == res16.metrics["macro_acc"] and result["tested_in"] == "fp16"
    assert "test_macro_acc_fp32" in result
    _, _, probs = read_dcase_output(out / "output.csv")
    e = np.exp(logits16 - logits16.max(1, keepdims=True))
    assert np.allclose(probs, e / e.sum(1, keepdims=True), atol=1e-6)  # output.csv is the fp16 model's
    assert any("WARNING" in m and "fp16" in m for m in logs)


def test_cli_bcbl32_teacher_hears_44k(synth_dataset, tmp_path):
    r = _cli(
        "--system",
        "bcbl32_fms",
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
    assert "epoch 1/1 " in r.stdout  # --epochs is exact for a teacher too (not the smoke teachers' 24)
    assert "1x256x89 at 44.1 kHz" in r.stdout
    res = json.loads((tmp_path / "split100" / "bcbl32_fms" / "result.json").read_text())
    assert res["sample_rate"] == 44100 and res["input_shape"] == "1x256x89"
    assert 39e6 < res["macs"] < 41e6 and res["tested_in"] == "fp32"


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_epochs_option_is_exact_for_every_system(profile):
    """`--epochs N` (python -m asc_ray.train and every job: train.epochs=N) trains N epochs whatever the
    system: neither the smoke profile's 32-BCBL teacher epochs, nor the min_steps floor, nor a family's epochs
    given on the command line change it; it is in every unit's resume key."""
    from asc_ray.cli import parse
    from asc_ray.systems import SYSTEMS
    from asc_ray.train import train_epochs, unit_config

    argv = ["--data-dir", "D", "--output-dir", "O", "--profile", profile, "--epochs", "3"]
    _, cfg = parse([*argv[:-2], "bcbl.epochs=7", *argv[-2:], "passt.epochs=7"], "test")  # options anywhere
    plain = load_config(profile, None, [])
    for name, system in SYSTEMS.items():
        assert train_epochs(system, cfg, steps_per_epoch=1) == 3, name
        assert train_epochs(system, plain, steps_per_epoch=1) != 3, name
        assert unit_config(cfg, system) != unit_config(plain, system), name
        assert "train.epochs" not in unit_config(plain, system)  # off: keys made before it existed still hold
    with pytest.raises(SystemExit):  # argparse refuses it with a message, before anything loads
        parse([*argv[:-1], "0"], "test")


def test_min_steps_gives_a_tiny_split_more_epochs_and_the_schedule_follows(synth_dataset, tmp_path):
    """train.min_steps: a split whose epochs make fewer optimizer steps trains more epochs (the smoke profile's
    split 5 has a few batches an epoch: 12 epochs left every system at chance). The LR schedule spans them all,
    the effective epochs are an MLflow param, and the key is in the units' resume keys."""
    from asc_ray.train import unit_config, unit_params

    plain = _trainer(synth_dataset, tmp_path / "a")
    steps = len(plain.batches)
    assert plain.h["epochs"] == 2  # min_steps 0 (the full profile's default): epochs as configured
    t = _trainer(synth_dataset, tmp_path / "b", overrides=[f"train.min_steps={5 * steps + 1}"])
    assert t.h["epochs"] == 6 and unit_params(t)["train_epochs"] == 6
    (tmp_path / "b" / "baseline").mkdir(parents=True)
    t.fit()
    assert len(t.history) == 6 and t.sched.last_epoch == 6 * steps
    assert t.sched.get_last_lr()[0] < 1e-3 * t.h["lr"]  # the cosine reached its end at the last step
    big = _trainer(synth_dataset, tmp_path / "c", overrides=[f"train.min_steps={steps}"])
    assert big.h["epochs"] == 2  # enough steps already: never fewer epochs than configured
    assert unit_config(t.cfg, t.system)["train.min_steps"] == 5 * steps + 1


def test_fp16_on_a_cpu_runs_in_the_default_layout(synth_dataset, tmp_path, monkeypatch):
    """Half precision on a CPU without fp16 units is 2.7x slower channels-last (docs/benchmarks.md): the test
    pass of the fp16 export runs contiguous there; its logits are the fp32 model's up to fp16 rounding."""
    from asc_ray.predict import load_trained

    t = _trainer(synth_dataset, tmp_path)
    assert t.channels_last and t.device.type == "cpu"
    torch.save({k: v.half() for k, v in t.model.state_dict().items()}, tmp_path / "m16.pt")
    layouts = []
    real = torch.nn.Conv2d._conv_forward
    monkeypatch.setattr(
        torch.nn.Conv2d,
        "_conv_forward",
        lambda self, x, w, b: (
            layouts.append((x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)))
            or real(self, x, w, b)
        ),
    )
    files = t.data.test_files[:8]
    fp16 = load_trained(t.system, t.cfg, tmp_path / "m16.pt").to(memory_format=torch.channels_last)
    got = t.predict(files, model=fp16)
    assert layouts and all(plain for plain, _ in layouts)
    layouts.clear()
    want = t.predict(files)  # the fp32 model keeps channels-last
    assert layouts and all(cl for _, cl in layouts) and not all(plain for plain, _ in layouts)
    assert np.abs(got - want).max() < 0.05 * max(1.0, np.abs(want).max())
