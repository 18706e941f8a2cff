"""The recipe as the code that made Table 3 ran it: PaSST's schedule per epoch as CP-JKU's exp_warmup_linear_down,
FocusNet's reference mask by default, the whole split with the last epoch kept, the baseline's 2000 warm-up
steps uncapped, and students of one seed sharing what makes a paired comparison: initial weights and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asc_ray.config import load_config
from asc_ray.optim import adam_exp_warmup_linear_down, adamw_cosine, exp_warmup_linear_down
from asc_ray.systems import get_system, hparams


# CP-JKU's helpers/lr_schedule.py as SNTL's PaSST script imports it, verbatim but for the names
def _ref_exp_rampup(rampup_length):
    def wrapper(epoch):
        if epoch < rampup_length:
            epoch = np.clip(epoch, 0.5, rampup_length)
            phase = 1.0 - epoch / rampup_length
            return float(np.exp(-5.0 * phase * phase))
        return 1.0

    return wrapper


def _ref_linear_rampdown(rampdown_length, start=0, last_value=0):
    def wrapper(epoch):
        if epoch <= start:
            return 1.0
        if epoch - start < rampdown_length:
            return last_value + (1.0 - last_value) * (rampdown_length - epoch + start) / rampdown_length
        return last_value

    return wrapper


def _reference(warmup, rampdown_length, start_rampdown, last_value):
    up, down = _ref_exp_rampup(warmup), _ref_linear_rampdown(rampdown_length, start_rampdown, last_value)
    return lambda epoch: up(epoch) * down(epoch)


def test_passt_schedule_equals_the_reference_at_every_epoch():
    h = load_config("full").passt
    assert (h.warmup_epochs, h.rampdown_start, h.rampdown_epochs, h.last_lr, h.epochs) == (3, 3, 10, 0.01, 25)
    ref = _reference(3, 10, 3, 0.01)
    ours = [exp_warmup_linear_down(e, 3, 3, 10, 0.01) for e in range(25)]
    assert ours == pytest.approx([ref(e) for e in range(25)], abs=1e-12)
    # the shape the report's teachers trained with: 3.1 % at epoch 0, the peak at 3, 1 % from 13 to the end
    assert ours[0] == pytest.approx(np.exp(-5 * (1 - 0.5 / 3) ** 2)) and ours[3] == 1.0
    assert ours[4] == pytest.approx(0.901) and ours[13:] == [0.01] * 12


def test_the_factor_holds_for_every_step_of_its_epoch():
    h = load_config("full").passt
    model = torch.nn.Linear(2, 2)
    opt, sched = adam_exp_warmup_linear_down(model, h, steps_per_epoch=4, epochs=25)
    lrs = []
    for _ in range(25 * 4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    per_epoch = np.array(lrs).reshape(25, 4)
    assert (per_epoch == per_epoch[:, :1]).all()
    assert per_epoch[:, 0] == pytest.approx(
        [h.lr * exp_warmup_linear_down(e, 3, 3, 10, 0.01) for e in range(25)]
    )


def test_the_baseline_warms_up_its_2000_steps_at_every_split():
    cfg = load_config("full")
    h = hparams(get_system("baseline"), cfg)
    assert h.warmup_steps == 2000
    opt, sched = adamw_cosine(torch.nn.Linear(2, 2), h, steps_per_epoch=10, epochs=150)  # 1,500 steps in all
    for _ in range(1000):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(h.lr * 1001 / 2000)  # still warming up: no cap at half


def test_a_short_split_says_its_warm_up_is_long(make_trainer):
    t = make_trainer("baseline", split=5, overrides=["baseline.warmup_steps=2000"])
    assert any("2000 warm-up steps" in line for line in t.logs), t.logs


def test_focusnet_reference_mask_is_the_default_of_both_profiles():
    assert load_config("full").focusnet.mask == "reference" == load_config("smoke").focusnet.mask


def test_the_full_profile_trains_on_the_whole_split_and_keeps_the_last_epoch(make_trainer):
    cfg = load_config("full")
    assert cfg.train.select == "last"
    t = make_trainer("baseline", split=100, profile="full", overrides=["passt.pretrained=false"])
    assert t.data.val_files == [] and t.data.train_files == t.data.split_files


def test_students_of_a_seed_share_weights_and_batches_teachers_do_not(make_trainer, synth_dataset):
    from asc_ray.data.tau import TauDataset

    files = TauDataset.open(synth_dataset).split_files(100)
    table = (files, np.random.default_rng(0).normal(size=(len(files), 10)).astype(np.float32))
    kd = make_trainer("kd_ensemble", logits=table, seed=1)
    control = make_trainer("no_kd", seed=1)
    other = make_trainer("no_kd", seed=2)
    pairs = zip(kd.model.state_dict().values(), control.model.state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    assert same and kd.seed == control.seed != other.seed
    first = [next(iter(t.batches))["index"].tolist() for t in (kd, control, other)]
    assert first[0] == first[1] != first[2]
    assert make_trainer("bcbl32_fms").seed != make_trainer("bcbl32_dir").seed  # independent teachers
