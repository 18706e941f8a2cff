"""The speed switches (train.compile, amp, channels_last, device_augment, prefetch) against the eager path, on
the CPU: the loss of every optimizer step of a first epoch (4 steps of a batch of 32 on the tiny set), read
where the Trainer computes it.

Tolerances, relative to eager's loss at the same step:
- off (each switch absent or false): bit-identical, the path of every run before the switches existed;
- float rounding only (channels_last, compile): step 1 (the forward of the same weights) within
  1e-5; steps 1-4 within 2e-2, since Adam's normalised update turns a rounding-level difference in a
  near-zero gradient into a step of the learning rate's size (channels-last alone moves step 4 by ~1e-2);
- bf16 autocast: step 1 within 2e-2, steps 1-4 within 4e-2;
- prefetch: bit-identical (on a CPU it hands over the same batches; tests/data/test_dataset.py checks CUDA);
- device_augment draws another random stream, so its curve equals eager's only where the draws cannot
  matter (every augmentation probability 0): bit-identical there; asc_ray.augment's tests check that the same
  draws give the same augmented batch as the eager functions, and the draws' distributions.
"""

from __future__ import annotations

import numpy as np
import pytest

from asc_ray import losses

STEPS = ["bcbl.batch_size=32", "passt.batch_size=32", "train.epochs=1"]  # split 100: 140 clips, 4 steps
NO_AUGMENT = ["augment.dir_p=0", "augment.fms_p=0", "augment.freqm=0", "baseline.roll_s=0"]
OFF = ["train.compile=false", "train.device_augment=false", "train.prefetch=true"]


_CURVES: dict = {}  # (system, overrides) -> curve: deterministic on one machine, so each is computed once


@pytest.fixture
def curve(make_trainer, synth_dataset, monkeypatch):
    """curve(system, overrides) -> the loss of each step of one epoch."""
    from asc_ray.data.tau import TauDataset
    from asc_ray.systems import get_system

    files = TauDataset.open(synth_dataset).split_files(100)
    table = (files, np.random.default_rng(0).normal(size=(len(files), 10)).astype(np.float32))

    def run(system, overrides=()):
        k = (system, tuple(overrides))
        if k not in _CURVES:
            _CURVES[k] = record(system, overrides)
        return _CURVES[k]

    def record(system, overrides):
        seen: list[float] = []
        name = get_system(system).loss
        fn = losses.LOSSES[name]

        def recording(*a, **k):
            loss = fn(*a, **k)
            seen.append(float(loss.detach()))
            return loss

        monkeypatch.setitem(losses.LOSSES, name, recording)
        logits = table if get_system(system).needs else None
        t = make_trainer(system, 100, [*STEPS, *overrides], logits=logits)
        t.train_epoch()
        monkeypatch.setitem(losses.LOSSES, name, fn)
        assert len(seen) == 4
        return np.array(seen)

    return run


def rel(a, b):
    return np.abs(a - b) / np.abs(b)


@pytest.mark.parametrize("system", ["baseline", "kd_ensemble"])
def test_switches_off_are_todays_path_bit_for_bit(curve, system):
    eager = curve(system)
    assert np.array_equal(curve(system, OFF), eager)
    assert np.array_equal(curve(system, ["train.prefetch=false"]), eager)


@pytest.mark.parametrize(
    ("system", "switch", "first", "curve_tol"),
    [
        ("kd_ensemble", "train.channels_last=false", 1e-5, 2e-2),  # auto = channels-last for N-BCBL
        ("bcbl32_fms_dir", "train.amp=true", 2e-2, 4e-2),
        ("kd_ensemble", "train.amp=true", 2e-2, 4e-2),
        ("passt_dir", "train.amp=true", 2e-2, 4e-2),
    ],
)
def test_a_switch_keeps_eagers_loss_curve(curve, system, switch, first, curve_tol):
    eager, fast = curve(system), curve(system, [switch])
    assert rel(fast, eager)[0] <= first, (fast, eager)
    assert rel(fast, eager).max() <= curve_tol, (fast, eager)


@pytest.mark.parametrize("system", ["baseline", "kd_ensemble", "passt_fms_dir"])
def test_device_augment_is_eager_where_draws_cannot_matter(curve, system):
    """No augmentation applies: the drawn path (fixed shapes, draws on the device) computes what eager does."""
    eager = curve(system, NO_AUGMENT)
    assert np.array_equal(curve(system, [*NO_AUGMENT, "train.device_augment=true"]), eager)


@pytest.mark.parametrize("system", ["bcbl32_fms_dir"])
def test_device_augment_trains_like_eager(curve, system):
    """With every augmentation on, another stream of the same distributions: the same loss scale, not the same
    values (a different random draw moves a tiny model's first losses by a few per cent)."""
    eager, drawn = curve(system), curve(system, ["train.device_augment=true"])
    assert not np.array_equal(eager, drawn)
    assert rel(drawn, eager).max() <= 0.1, (drawn, eager)


def test_device_augment_resumes_bit_identical(make_trainer, tmp_path):
    """The draws come from (train_seed, epoch, rank) like eager's: a resumed epoch draws them again."""
    import torch

    over = ["train.device_augment=true", "train.epochs=2", "bcbl.batch_size=32"]
    whole = make_trainer("bcbl32_fms_dir", 25, over, out=tmp_path / "whole")
    whole.fit()

    class Stop(Exception):
        pass

    def stop(m, ckpt):
        raise Stop

    with pytest.raises(Stop):
        make_trainer("bcbl32_fms_dir", 25, over, out=tmp_path / "stopped").fit(stop)
    resumed = make_trainer("bcbl32_fms_dir", 25, over, out=tmp_path / "stopped")
    assert resumed.load_checkpoint(tmp_path / "stopped" / "checkpoint") and resumed.epoch == 1
    resumed.fit()
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_step_keeps_eagers_loss_curve(curve):
    """torch.compile on the CPU (inductor, a C compiler: about a minute). `reduce-overhead` differs only by
    CUDA graphs, which apply on a GPU only (bench/gpu_throughput.py runs it there); on the CPU it is compiled
    in the test below, with the other switches."""
    eager, compiled = curve("baseline"), curve("baseline", ["train.compile=true"])
    assert rel(compiled, eager)[0] <= 1e-5, (compiled, eager)
    assert rel(compiled, eager).max() <= 2e-2, (compiled, eager)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_switch_on_keeps_eagers_loss_curve(curve):
    """All at once, as bench/gpu_check.sh's `all` runs them (bf16 sets the tolerance), where the draws cannot
    matter."""
    eager = curve("kd_ensemble", NO_AUGMENT)
    on = ["train.compile=reduce-overhead", "train.amp=true", "train.channels_last=true"]
    fast = curve("kd_ensemble", [*NO_AUGMENT, *on, "train.device_augment=true", "train.prefetch=true"])
    assert rel(fast, eager)[0] <= 2e-2, (fast, eager)
    assert rel(fast, eager).max() <= 4e-2, (fast, eager)
