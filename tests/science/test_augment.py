"""Augmentations: mixup mixes inputs AND targets, Freq-MixStyle, DIR on device a only, frequency masking."""

import numpy as np
import scipy.signal
import torch

from asc_ray.augment import dir_augment, freq_mask, freq_mixstyle, ir_bank, mixup


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mixup_is_convex_combination_of_inputs_and_targets():
    x = torch.randn(6, 1, 8, 5)
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    xm, ym, lam, perm = mixup(x, y, alpha=1.0, generator=gen(1))
    assert 0.0 < lam < 1.0
    assert sorted(perm.tolist()) == list(range(6))
    assert not torch.equal(perm, torch.arange(6))  # a real partner for this seed
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y[perm])
    assert not torch.allclose(xm, x)  # the inputs are mixed (the reference code's bug left them unmixed)
    torch.testing.assert_close(ym.sum(1), torch.ones(6))
    # deterministic with a generator
    xm2, _, lam2, perm2 = mixup(x, y, alpha=1.0, generator=gen(1))
    assert lam2 == lam and torch.equal(perm2, perm) and torch.equal(xm2, xm)


def test_mixup_lambda_follows_beta_alpha():
    # Beta(1, 1) is uniform: mean 0.5; Beta(0.2, 0.2) piles up near 0 and 1
    g = gen(3)
    x, y = torch.zeros(2, 1), torch.eye(2)
    lams = np.array([mixup(x, y, 1.0, generator=g)[2] for _ in range(400)])
    assert abs(lams.mean() - 0.5) < 0.05
    lams_u = np.array([mixup(x, y, 0.2, generator=g)[2] for _ in range(400)])
    assert ((lams_u < 0.1) | (lams_u > 0.9)).mean() > 0.5


def band_stats(x):
    return x.mean(dim=(1, 3)), x.std(dim=(1, 3))  # per sample and frequency band: [B, F]


def test_freq_mixstyle_moves_band_stats_toward_partner():
    torch.manual_seed(0)
    f = 6
    mu = torch.stack([torch.full((1, f, 1), -4.0), torch.full((1, f, 1), 4.0)]) + torch.randn(2, 1, f, 1)
    sig = torch.stack([torch.full((1, f, 1), 0.5), torch.full((1, f, 1), 3.0)])
    x = torch.randn(2, 2, f, 400) * sig + mu  # two clips with very different band statistics
    mu0, sd0 = band_stats(x)
    for seed in range(20):  # find a draw where the two clips are each other's partner
        out = freq_mixstyle(x, p=1.0, alpha=0.3, generator=gen(seed))
        if not torch.allclose(out, x, atol=1e-4):
            break
    assert out.shape == x.shape and not torch.allclose(out, x, atol=1e-4)
    mu1, sd1 = band_stats(out)
    for i, j in ((0, 1), (1, 0)):
        # new stats = lam * own + (1 - lam) * partner's, one lam per sample for all bands, lam in [0, 1]
        lam = (mu1[i] - mu0[j]) / (mu0[i] - mu0[j])
        torch.testing.assert_close(lam, lam.mean().expand_as(lam), atol=1e-3, rtol=0)
        assert -1e-4 <= lam.mean() <= 1 + 1e-4
        torch.testing.assert_close(sd1[i], lam * sd0[i] + (1 - lam) * sd0[j], atol=1e-3, rtol=1e-3)
        # so each band's mean is no further from the partner's than before (strictly closer unless lam = 1)
        assert ((mu1[i] - mu0[j]).abs() <= (mu0[i] - mu0[j]).abs() + 1e-4).all()
    assert (mu1 - mu0).abs().max() > 0.1


def test_freq_mixstyle_identity_when_p0_and_no_grad_through_stats():
    x = torch.randn(3, 1, 4, 7)
    assert torch.equal(freq_mixstyle(x, p=0.0), x)
    xr = x.clone().requires_grad_()
    out = freq_mixstyle(xr, p=1.0, generator=gen(2))
    out.sum().backward()
    # stats are detached: gradient is only through (x - mu) / sig * sig_mix, i.e. sig_mix / sig per element
    assert xr.grad is not None and torch.isfinite(xr.grad).all()


def test_dir_augment_only_device_a_and_length_preserved():
    torch.manual_seed(0)
    wave = torch.randn(5, 400)
    devices = torch.tensor([0, 1, 0, 3, 2])
    irs = [torch.tensor([0.5, 0.3, -0.2, 0.1]), torch.tensor([1.0, 0.0, 0.0, 0.0, -0.5])]
    out = dir_augment(wave, devices, irs, p=1.0, device_a=0, generator=gen(0))
    assert out.shape == wave.shape and out is not wave
    for i in (1, 3, 4):
        assert torch.equal(out[i], wave[i])  # bit-identical
    for i in (0, 2):
        assert not torch.allclose(out[i], wave[i])
        # equals one IR's full convolution (scipy.signal.fftconvolve) cut to the input length
        candidates = [scipy.signal.fftconvolve(wave[i].numpy(), ir.numpy())[:400] for ir in irs]
        assert any(np.allclose(out[i].numpy(), c, atol=1e-5) for c in candidates)
    assert torch.equal(dir_augment(wave, devices, irs, p=0.0), wave)


def test_dir_augment_probability():
    wave = torch.randn(200, 64)
    devices = torch.zeros(200, dtype=torch.long)
    out = dir_augment(wave, devices, [torch.tensor([0.5, 0.5])], p=0.6, generator=gen(4))
    changed = (out != wave).any(dim=1).float().mean().item()
    assert 0.45 < changed < 0.75


def test_freq_mask_bands():
    x = torch.ones(16, 1, 64, 10)
    out = freq_mask(x, max_bins=20, generator=gen(0))
    masked = (out == 0).all(dim=-1).squeeze(1)  # [B, F] whole bands masked over time
    assert torch.equal((out == 0), masked[:, None, :, None].expand_as(out))
    widths = masked.sum(1)
    assert widths.max() <= 20 and widths.max() > 0
    # each mask is one contiguous band
    for row in masked:
        idx = row.nonzero().flatten()
        if idx.numel():
            assert idx[-1] - idx[0] + 1 == idx.numel()
    assert len(set(widths.tolist())) > 1  # masks differ per sample
    assert torch.equal(freq_mask(x, max_bins=0), x)


def test_roll_shifts_each_clip_circularly_within_the_range():
    from asc_ray.augment import roll

    n, max_shift = 1000, 100
    wave = torch.arange(8 * n, dtype=torch.float32).view(
        8, n
    )  # every sample value unique: shifts are readable
    out = roll(wave, max_shift, generator=gen(3))
    shifts = []
    for i in range(8):
        k = int((out[i, 0] - wave[i, 0]).item()) % n  # out[t] = wave[t - s]  ->  out[0] = wave[-s]
        s = (n - k) % n
        s = s - n if s > n // 2 else s
        torch.testing.assert_close(out[i], torch.roll(wave[i], s))  # circular: nothing lost, nothing added
        assert -max_shift <= s <= max_shift
        shifts.append(s)
    assert len(set(shifts)) > 1  # each clip draws its own shift
    assert torch.equal(roll(wave, max_shift, generator=gen(3)), out)  # reproducible with a generator
    assert torch.equal(roll(wave, 0), wave)


def test_dir_augment_bank_equals_list():
    # the Trainer keeps the IRs as one padded bank on its device: same draws, same convolution as the list
    torch.manual_seed(0)
    wave = torch.randn(6, 300)
    devices = torch.tensor([0, 0, 1, 0, 0, 2])
    irs = [
        torch.tensor([0.5, 0.3, -0.2]),
        torch.tensor([1.0, 0.0, 0.0, 0.0, -0.5, 0.25]),
        torch.tensor([0.9]),
    ]
    bank = ir_bank(irs)
    assert bank.shape == (3, 6) and torch.equal(bank[0, 3:], torch.zeros(3))
    a = dir_augment(wave, devices, irs, p=1.0, generator=gen(3))
    b = dir_augment(wave, devices, bank, p=1.0, generator=gen(3))
    assert not torch.equal(a, wave)
    assert torch.allclose(a, b, atol=1e-5)


# ---- the drawn forms (train.device_augment): the same arithmetic from the same draws, fixed shapes
def test_drawn_forms_equal_the_eager_functions_for_the_same_draws():
    from asc_ray.augment import (
        _beta,
        band_mask,
        dir_drawn,
        freq_mixstyle_drawn,
        mixup_drawn,
        roll,
        roll_by,
    )

    torch.manual_seed(0)
    b, n = 6, 300
    wave = torch.randn(b, n)
    # roll: eager's draw, then the drawn form with that shift
    g = gen(5)
    shift = torch.randint(-30, 31, (b,), generator=gen(5))
    assert torch.equal(roll(wave, 30, generator=g), roll_by(wave, shift))
    # frequency masking: eager's two uniform draws
    x = torch.randn(b, 1, 16, 9)
    u = torch.rand(2, b, generator=gen(6))
    assert torch.equal(freq_mask(x, 5, generator=gen(6)), band_mask(x, u[0], u[1], 5))
    # Freq-MixStyle: gate, lam, perm as eager draws them (gate <= p: applied)
    g = gen(7)
    gate = torch.rand(1, generator=g)
    lam, perm = _beta(0.3, b, g), torch.randperm(b, generator=g)
    eager = freq_mixstyle(x, p=1.0, alpha=0.3, generator=gen(7))
    torch.testing.assert_close(freq_mixstyle_drawn(x, gate[0], lam, perm, p=1.0), eager, rtol=0, atol=0)
    assert torch.equal(freq_mixstyle_drawn(x, torch.tensor(0.9), lam, perm, p=0.4), x)  # gate above p
    # mixup
    y = torch.nn.functional.one_hot(torch.arange(b) % 3, 3).float()
    xm, ym, lam_f, perm = mixup(x, y, alpha=1.0, generator=gen(8))
    xd, yd = mixup_drawn(x, y, torch.tensor(lam_f), perm)
    torch.testing.assert_close(xd, xm)
    torch.testing.assert_close(yd, ym)
    # DIR: clips of device a with u < p convolved with their drawn kernel, the others untouched
    irs = ir_bank([torch.tensor([0.5, 0.3, -0.2, 0.1]), torch.tensor([1.0, 0.0, 0.0, -0.5, 0.25, 0.1])])
    devices = torch.tensor([0, 1, 0, 0, 2, 0])
    u_dir = torch.tensor([0.1, 0.1, 0.9, 0.2, 0.1, 0.5])
    k = torch.tensor([1, 0, 0, 0, 1, 1])
    out = dir_drawn(wave, devices, irs, u_dir, k, p=0.6, device_a=0)
    for i in range(b):
        if devices[i] == 0 and u_dir[i] < 0.6:
            full = scipy.signal.fftconvolve(wave[i].numpy(), irs[k[i]].numpy())[:n]
            assert np.allclose(out[i].numpy(), full, atol=1e-5), i
        else:
            assert torch.equal(out[i], wave[i]), i
    assert torch.equal(dir_drawn(wave, devices, irs, u_dir, k, p=0.0), wave)


def test_an_epochs_draws_follow_the_eager_distributions():
    from asc_ray.augment import draw_epoch, step_draws

    s, b = 400, 64
    d = draw_epoch(s, b, gen(9), max_shift=50, n_irs=5, fms_alpha=0.3, mixup_alpha=1.0)
    assert {k: tuple(v.shape) for k, v in d.items()} == {
        **{
            k: (s, b)
            for k in ("dir_u", "dir_k", "fms_lam", "fms_perm", "mix_perm", "mask_w", "mask_s", "roll")
        },
        "fms_u": (s,),
        "mix_lam": (s,),
    }
    assert abs((d["dir_u"] < 0.6).float().mean() - 0.6) < 0.01  # DIR's probability
    assert abs((d["fms_u"] <= 0.4).float().mean() - 0.4) < 0.06  # FMS once per batch
    assert set(d["dir_k"].unique().tolist()) == set(range(5))
    assert d["roll"].min() >= -50 and d["roll"].max() <= 50 and len(d["roll"].unique()) == 101
    assert abs(d["mix_lam"].mean() - 0.5) < 0.05  # Beta(1, 1)
    lam = d["fms_lam"]
    assert abs(lam.mean() - 0.5) < 0.02 and ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.5  # Beta(0.3, 0.3)
    ordered = torch.arange(b).expand(s, b)
    for k in ("fms_perm", "mix_perm"):  # a permutation per step, each its own
        assert torch.equal(d[k].sort(dim=1).values, ordered) and len({tuple(r) for r in d[k].tolist()}) == s
    one = step_draws(d, 3)
    assert torch.equal(one["roll"], d["roll"][3]) and one["mix_lam"].dim() == 0
    # an epoch's draws come from its generator alone
    again = draw_epoch(s, b, gen(9), max_shift=50, n_irs=5, fms_alpha=0.3, mixup_alpha=1.0)
    assert all(torch.equal(v, again[k]) for k, v in d.items())
