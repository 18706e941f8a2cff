"""The plain-PyTorch training loop (asc_ray.train): outputs, honest model selection, resume, bad checkpoints, the
one epoch count, and `python -m asc_ray.train` (in this process; as a subprocess in the slow suite)."""

import json

import numpy as np
import pytest
import torch
from helpers.procs import run_py

from asc_ray.config import load_config
from asc_ray.console import run_cli
from asc_ray.errors import AscRayError
from asc_ray.export import read_dcase_output
from asc_ray.layout import Layout, UnitRef
from asc_ray.predict import Classifier, classifier, unit_spec
from asc_ray.train import finish_unit, outputs


def _finish(t, **kw):
    """fit() then finish_unit(): what a unit does, in this process."""
    fitted = t.fit()
    return finish_unit(t.system, t.cfg, t.split, t.data, t.out_dir, fitted, **kw)


def test_select_last_trains_on_the_whole_split_and_keeps_the_last_epoch(make_trainer):
    """Nothing reads a holdout when the last epoch is kept (the smoke profile): the whole split trains."""
    t = make_trainer(overrides=["train.select=last"], seed=1)
    assert t.data.val_files == [] and sorted(t.data.train_files) == sorted(t.data.ds.split_files(100))
    fitted = t.fit()
    assert fitted.selected_epoch == 2 and fitted.selected_on == "last" and np.isnan(fitted.val_macro_acc)
    epochs = [ln for ln in t.logs if "] epoch " in ln]  # named as the unit's rank line names it: seed too
    assert len(epochs) == 2, t.logs
    assert all(ln.startswith("[baseline split100 seed1] epoch ") for ln in epochs), epochs


def test_fit_selects_on_validation_only_and_writes_outputs(make_trainer, monkeypatch):
    t = make_trainer(overrides=["train.select=val"])
    seen = []
    real = classifier.logits_of_each

    def spy(models, store, files):
        seen.append(([next(m.model.parameters()).dtype for m in models], set(files)))
        return real(models, store, files)

    monkeypatch.setattr(classifier, "logits_of_each", spy)  # Classifier.logits_of's
    monkeypatch.setattr(outputs, "logits_of_each", spy)
    fitted = t.fit()
    during_fit, seen[:] = list(seen), []
    result = finish_unit(t.system, t.cfg, 100, t.data, t.out_dir, fitted, log=lambda m: None)
    val, test = set(t.data.val_files), set(t.data.test_files)
    assert val and not val & test and not val & set(t.data.train_files)
    # selection never sees test
    assert len(during_fit) == 2 and all(d == [torch.float32] and f == val for d, f in during_fit)
    # test only for the report, in one pass: the selected weights in fp32 and the deployed fp16 export
    assert seen == [([torch.float32, torch.float16], test)]
    hist = [h["val_macro_acc"] for h in t.history]
    assert result["selected_epoch"] == int(np.argmax(hist)) + 1 and result["val_macro_acc"] == max(hist)
    out = t.out_dir
    files, labels, probs = read_dcase_output(out / "output.csv")
    assert len(files) == len(test) and not files[0].startswith("audio/")
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    params = sum(p.numel() for p in t.model.parameters())
    assert json.loads((out / "output.complexity.json").read_text())["params"] == params == result["params"]
    assert (out / "class_accuracy.png").stat().st_size > 1000 and (out / "model_fp16.pt").is_file()
    assert json.loads((out / "result.json").read_text())["test_macro_acc"] == result["test_macro_acc"]
    assert 0.0 <= result["test_macro_acc"] <= 1.0


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(make_trainer, tmp_path):
    full = make_trainer(out=tmp_path / "a")
    full.fit()

    class Stop(Exception):
        pass

    def stop_after_first(m, ckpt):
        raise Stop

    first = make_trainer(out=tmp_path / "b")
    with pytest.raises(Stop):
        first.fit(stop_after_first)
    resumed = make_trainer(out=tmp_path / "b")
    resumed.load_checkpoint(tmp_path / "b" / "checkpoint")
    assert resumed.epoch == 1
    resumed.fit()
    assert len(resumed.history) == 2
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k


CLOCK = ("epoch_s", "samples_per_s", "end_time")  # how long an epoch took and when it ended: never the same


@pytest.mark.parametrize("system", ["baseline", "bcbl32_fms_dir", "passt_dir", "kd_ensemble"])
def test_a_unit_resumed_after_any_epoch_ends_bit_identical_to_one_never_stopped(
    make_trainer, synth_dataset, tmp_path, system
):
    """What the chaos run (tests/reliability/chaos) holds a resumed unit to: training is seeded per unit and per epoch
    (Trainer.epoch_generator) and the checkpoint holds the weights, BatchNorm statistics, optimizer, schedule
    and history, so a unit stopped after an epoch and resumed from its checkpoint ends with the same bits as
    one that never stopped (CPU, one thread): every weight, every figure but the clock. Systems: the roll,
    DIR + Freq-MixStyle + mixup, PaSST's patchout and dropout, distillation."""
    from helpers.training import new_trainer

    logits = None
    if system == "kd_ensemble":
        from asc_ray.data.tau import TauDataset

        files = TauDataset.open(synth_dataset).split_files(25)
        logits = (files, np.random.default_rng(0).normal(size=(len(files), 10)).astype(np.float32))

    def trainer(out):
        over = ["train.epochs=3", "passt.batch_size=16"]
        return new_trainer(synth_dataset, tmp_path, system, 25, over, out, logits=logits)

    whole = trainer(tmp_path / "whole")
    whole.fit()

    class Stop(Exception):
        pass

    out = tmp_path / "stopped"

    def stop_after_epoch_1(m, ckpt):
        raise Stop  # the worker dies right after the epoch's checkpoint (each epoch is seeded alike)

    with pytest.raises(Stop):
        trainer(out).fit(stop_after_epoch_1)
    resumed = trainer(out)
    assert resumed.load_checkpoint(out / "checkpoint") and resumed.epoch == 1
    resumed.fit()
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    figures = lambda h: repr([{k: v for k, v in m.items() if k not in CLOCK} for m in h])  # noqa: E731
    assert figures(resumed.history) == figures(whole.history)  # (repr: NaN == NaN)


def test_checkpoint_of_another_architecture_is_refused(make_trainer, tmp_path):
    t24 = make_trainer("bcbl24", overrides=["bcbl.epochs=1"])
    t24.fit()
    t32 = make_trainer("baseline")
    ckpt = tmp_path / "bcbl24" / "checkpoint"
    with pytest.raises(AscRayError) as e:
        t32.load_checkpoint(ckpt)
    assert e.value.path == str(ckpt / "checkpoint.pt") and "--fresh" in e.value.fix


def _train_cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m asc_ray.train ARGS` in this process (as run_cli runs it): exit status, stdout, stderr."""
    from asc_ray.train.__main__ import main

    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main([str(a) for a in args]))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_kd_student_without_logits_says_what_to_do(synth_dataset, shared_cache, tmp_path, capsys):
    code, _, err = _train_cli(
        capsys,
        *("--system", "kd_ensemble", "--data-dir", synth_dataset, "--split", "100"),
        *("--epochs", "1", "--output-dir", tmp_path, "--profile", "smoke", f"data.cache_dir={shared_cache}"),
    )
    assert code == 2 and "Traceback" not in err
    msg = err[err.index("error: ") :].splitlines()  # one message: the problem with the file, then the fix
    assert len(msg) == 2 and str(tmp_path / "logits" / "teachers_split100.parquet") in msg[0]
    assert msg[1].startswith("  fix: ")


def test_cli_trains_a_kd_student_from_a_logits_table(synth_dataset, shared_cache, tmp_path, capsys):
    """--logits: a kd_ensemble student learns from any table over its split; it writes what tfs learns from."""
    from asc_ray.data.logits import write_logits_table
    from asc_ray.data.tau import TauDataset

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
    code, out, err = _train_cli(
        capsys,
        *("--system", "kd_ensemble", "--data-dir", synth_dataset, "--split", "100"),
        *(
            "--epochs",
            "1",
            "--output-dir",
            tmp_path,
            "--profile",
            "smoke",
            "--logits",
            tmp_path / "t.parquet",
        ),
        *("bcbl.batch_size=16", f"data.cache_dir={shared_cache}"),
    )
    assert code == 0, err
    unit = Layout(tmp_path).unit_dir(UnitRef("kd_ensemble", 100, 0))
    assert np.load(unit / "split_logits.npy").shape == (len(files), 10)  # for tfs
    res = json.loads((unit / "result.json").read_text())
    assert res["system"] == "kd_ensemble" and res["selected_epoch"] == 1 and str(unit) in out


def _cli(*args, cwd):
    return run_py(["-m", "asc_ray.train", *map(str, args)], cwd=cwd, timeout=600)


@pytest.mark.slow
def test_cli_trains_one_model(synth_dataset, tmp_path):
    r = _cli(
        *("--system", "baseline", "--data-dir", synth_dataset, "--split", "100", "--epochs", "1"),
        *("--output-dir", tmp_path, "--profile", "smoke", "bcbl.batch_size=16"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(Layout(tmp_path).unit(UnitRef("baseline", 100, 0)).record.read_text())
    assert res["system"] == "baseline" and res["split"] == 100 and res["selected_epoch"] == 1
    # its progress and its figures on the console: the epoch, and the test accuracy of the record
    assert "epoch 1/1" in r.stdout and f"{100 * res['test_macro_acc']:.2f}%" in r.stdout


@pytest.mark.slow
def test_cli_kd_student_without_logits_exits_2_with_one_message(synth_dataset, tmp_path):
    r = _cli(
        *("--system", "kd_ensemble", "--data-dir", synth_dataset, "--split", "100", "--epochs", "1"),
        *("--output-dir", tmp_path, "--profile", "smoke"),
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "teachers_split100.parquet" in r.stderr and "fix:" in r.stderr


@pytest.mark.slow
def test_cli_bcbl32_teacher_hears_44k(synth_dataset, tmp_path):
    r = _cli(
        *("--system", "bcbl32_fms", "--data-dir", synth_dataset, "--split", "100", "--epochs", "1"),
        *("--output-dir", tmp_path, "--profile", "smoke", "bcbl.batch_size=16"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1 " in r.stdout  # --epochs is exact for a teacher too (not the smoke teachers' 24)
    res = json.loads(Layout(tmp_path).unit(UnitRef("bcbl32_fms", 100)).record.read_text())
    assert res["sample_rate"] == 44100 and res["input_shape"] == "1x256x89"
    assert 39e6 < res["macs"] < 41e6 and res["tested_in"] == "fp32"
    assert res["input_shape"] in r.stdout  # what it hears, printed before it trains


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_32_bcbl_learns_the_synthetic_scenes(tmp_path):
    """A few epochs on the default synthetic set: clearly above chance (10 %)."""
    from asc_ray.data.synth import generate

    d = generate(tmp_path / "tau", seed=0)
    r = _cli(
        *("--system", "baseline", "--data-dir", d, "--split", "100", "--epochs", "12"),
        *("--output-dir", tmp_path / "o", "--profile", "smoke"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(Layout(tmp_path / "o").unit(UnitRef("baseline", 100, 0)).record.read_text())
    assert res["test_macro_acc"] > 0.25, res["test_macro_acc"]


# --- issue 10: what Table 3 depends on ---------------------------------------------------------------
def test_each_unit_trains_with_its_own_stable_seed(make_trainer):
    """Independent teachers: three bcbl32 teachers of a split start from different weights."""
    from asc_ray.train import unit_seed

    names = ("bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir")
    trainers = [make_trainer(n) for n in names]
    assert len({t.seed for t in trainers}) == 3
    assert [t.seed for t in trainers] == [unit_seed(0, n, 100) for n in names]  # stable run to run
    assert unit_seed(0, "bcbl32_fms", 50) != unit_seed(0, "bcbl32_fms", 100)
    w = [t.model.state_dict()["in_c.0.0.weight"] for t in trainers]  # the first convolution
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    again = make_trainer("bcbl32_fms")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            again.model.state_dict().values(), trainers[0].model.state_dict().values(), strict=True
        )
    )


def test_data_parallel_ranks_share_weights_but_draw_their_own_augmentations(make_trainer, tmp_path):
    s = "bcbl32_fms_dir"  # mixup + FMS + DIR
    ranks = [make_trainer(s, out=tmp_path / f"r{r}", rank=r, world_size=2) for r in (0, 1)]
    for a, b in zip(ranks[0].model.state_dict().values(), ranks[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # DDP would sync them anyway: start identical
    batch = next(iter(ranks[0].batches))
    x0, y0, _ = ranks[0].prepare_inputs(batch, ranks[0].epoch_generator())
    x1, y1, _ = ranks[1].prepare_inputs(batch, ranks[1].epoch_generator())
    assert not torch.equal(y0, y1) and not torch.allclose(x0, x1)  # different mixup partners / lambdas
    x0b, y0b, _ = ranks[0].prepare_inputs(batch, ranks[0].epoch_generator())
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)  # the same rank and epoch repeat themselves
    # each rank trains its own half of the training files (asc_ray.train.shard)
    files = [set(t.batches.files) for t in ranks]
    assert files[0] and files[1] and not files[0] & files[1]


def test_shard_gives_each_rank_every_nth_file_in_equal_numbers():
    from asc_ray.train import shard

    files = [f"f{i}" for i in range(11)]
    logits = np.arange(11 * 10, dtype=np.float32).reshape(11, 10)
    parts = [shard(files, logits, r, 3) for r in range(3)]
    assert [p[0] for p in parts] == [["f0", "f3", "f6"], ["f1", "f4", "f7"], ["f2", "f5", "f8"]]
    for got_files, got_logits in parts:  # the teacher logits follow their files
        assert np.array_equal(got_logits, logits[[int(f[1:]) for f in got_files]])
    assert not set.intersection(*(set(p[0]) for p in parts))  # disjoint; the remainder (f9, f10) left out
    assert shard(files, None, 1, 2) == (["f1", "f3", "f5", "f7", "f9"], None)
    assert shard(files, logits, 0, 1) == (files, logits)  # one rank: everything, unchanged


def test_baseline_is_the_official_recipe_and_says_so_in_its_params(make_trainer):
    from asc_ray.models import get_architecture
    from asc_ray.pipeline.unit import unit_params
    from asc_ray.systems import epochs, hparams

    got = {}
    for name in ("baseline", "bcbl24"):
        t = make_trainer(name, profile="full", overrides=["bcbl.epochs=150"])
        s, cfg = t.system, t.cfg
        opt, _ = get_architecture(s.model).optimizer(t.model, hparams(s, cfg), 1000, epochs(s, cfg, 1000))
        got[name] = (unit_params(s, cfg, t), opt.param_groups[0]["lr"], t.roll)
    params, lr0, roll = got["baseline"]
    assert params["warmup_steps"] == 2000 and params["roll_s"] == 0.1  # readable in its MLflow params
    assert lr0 == pytest.approx(0.005 / 2000) and roll == 3200  # 0.1 s at 32 kHz
    params, lr0, roll = got["bcbl24"]  # one of the report's own N-BCBL models
    assert params["warmup_steps"] == 100 and params["roll_s"] == 0.0
    assert lr0 == pytest.approx(0.005 / 100) and roll == 0
    assert got["baseline"][0]["input_shape"] == "1x256x65" and got["baseline"][0]["sample_rate"] == 32000


def test_the_reported_test_accuracy_is_the_fp16_models(make_trainer, monkeypatch):
    from asc_ray.metrics import evaluate
    from asc_ray.train import outputs

    monkeypatch.setattr(outputs, "FP16_WARN_DROP", -1.0)  # any drop at all warns: see that the warning fires
    t = make_trainer()
    logs = []
    result = _finish(t, log=logs.append)
    out = t.out_dir
    fp16 = Classifier.from_weights(unit_spec(t.system, t.cfg), out / "model_fp16.pt")
    assert next(fp16.model.parameters()).dtype == torch.float16
    logits16 = fp16.logits_of(t.data.store, t.data.test_files)
    res16 = evaluate(logits16, t.data.ds.labels(t.data.test_files), t.data.ds.devices(t.data.test_files))
    assert result["test_macro_acc"] == res16.metrics["macro_acc"] and result["tested_in"] == "fp16"
    assert "test_macro_acc_fp32" in result
    _, _, probs = read_dcase_output(out / "output.csv")
    e = np.exp(logits16 - logits16.max(1, keepdims=True))
    assert np.allclose(probs, e / e.sum(1, keepdims=True), atol=1e-6)  # output.csv is the fp16 model's
    assert any("WARNING" in m and "fp16" in m for m in logs)


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_epochs_option_is_exact_for_every_system(profile):
    """`--epochs N` (python -m asc_ray.train and every job: train.epochs=N) trains N epochs whatever the
    system: neither the smoke profile's 32-BCBL teacher epochs, nor the min_steps floor, nor a family's epochs
    given on the command line change it; it is in every unit's resume key."""
    from asc_ray.cli.jobs import parse
    from asc_ray.pipeline.keys import unit_config
    from asc_ray.systems import SYSTEMS, epochs

    argv = ["--data-dir", "D", "--output-dir", "O", "--profile", profile, "--epochs", "3"]
    _, cfg = parse([*argv[:-2], "bcbl.epochs=7", *argv[-2:], "passt.epochs=7"], "test")  # options anywhere
    plain = load_config(profile, None, [])
    for name, system in SYSTEMS.items():
        assert epochs(system, cfg, steps_per_epoch=1) == 3, name
        assert epochs(system, plain, steps_per_epoch=1) != 3, name
        assert unit_config(cfg, system) != unit_config(plain, system), name
        assert "train.epochs" not in unit_config(plain, system)  # off: keys made before it existed still hold
    with pytest.raises(SystemExit):  # argparse refuses it with a message, before anything loads
        parse([*argv[:-1], "0"], "test")


def test_min_steps_gives_a_tiny_split_more_epochs_and_the_schedule_follows(make_trainer, tmp_path):
    """train.min_steps: a split whose epochs make fewer optimizer steps trains more epochs (the smoke profile's
    split 5 has a few batches an epoch: 12 epochs left every system at chance). The LR schedule spans them all,
    the effective epochs are an MLflow param, and the key is in the units' resume keys."""
    from asc_ray.pipeline.keys import unit_config
    from asc_ray.pipeline.unit import unit_params

    plain = make_trainer(out=tmp_path / "a")
    steps = len(plain.batches)
    assert plain.epochs == 2  # min_steps 0 (the full profile's default): epochs as configured
    t = make_trainer(out=tmp_path / "b", overrides=[f"train.min_steps={5 * steps + 1}"])
    assert t.epochs == 6 and unit_params(t.system, t.cfg, t)["train_epochs"] == 6
    t.fit()
    assert len(t.history) == 6 and t.sched.last_epoch == 6 * steps
    assert t.sched.get_last_lr()[0] < 1e-3 * t.h.lr  # the cosine reached its end at the last step
    big = make_trainer(out=tmp_path / "c", overrides=[f"train.min_steps={steps}"])
    assert big.epochs == 2  # enough steps already: never fewer epochs than configured
    assert unit_config(t.cfg, t.system)["train.min_steps"] == 5 * steps + 1


def test_fp16_on_a_cpu_runs_in_the_default_layout(make_trainer, tmp_path, monkeypatch):
    """The test pass of the fp16 export runs contiguous on a CPU, as asc-ray-predict and the MLflow model run the
    deployed model (they know no training layout), so theirs are its numbers; its logits are the fp32 model's
    up to fp16 rounding."""
    t = make_trainer()
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
    spec = unit_spec(t.system, t.cfg)
    fp16 = Classifier.from_weights(spec, tmp_path / "m16.pt", channels_last=True)  # as training ran it
    got = fp16.logits_of(t.data.store, files)
    assert layouts and all(plain for plain, _ in layouts)
    layouts.clear()
    want = t.classifier().logits_of(t.data.store, files)  # the fp32 model keeps channels-last
    assert layouts and all(cl for _, cl in layouts) and not all(plain for plain, _ in layouts)
    assert np.abs(got - want).max() < 0.05 * max(1.0, np.abs(want).max())
