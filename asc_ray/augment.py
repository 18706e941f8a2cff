"""Data augmentations, each a small pure function on a batch (optional torch.Generator for determinism).

- mixup: mixes the INPUTS and the targets (the reference code mixed only the labels: a bug).
- freq_mixstyle: Freq-MixStyle, per-frequency-band instance statistics mixed across the batch.
- dir_augment: device impulse responses on device-`a` clips only.
- freq_mask: SpecAugment frequency masking, one mask per sample (torchaudio's iid_masks=True).
- roll: circular shift of each waveform by a random number of samples (the DCASE 2024 baseline's roll).

Each draws its random numbers from a CPU generator, step by step. With train.device_augment the Trainer draws
a whole epoch's numbers at once instead (`draw_epoch`: the same distributions, another random stream), copies
them to the training device once, and applies the `*_drawn` forms: fixed shapes and no host round trip per
step (a CUDA graph can hold them). Each eager function and its drawn form share the arithmetic (`roll_by`,
`band_mask`, `_mix_band_stats`, `_fft_convolve`), so the same draws give the same output. The Trainer runs one
chain of them (asc_ray.train.Trainer.prepare_inputs) with either source of draws: `Eager` or `Drawn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.fft import next_fast_len
from torch import Tensor
from torch.distributions import Beta


def _rand(shape, generator, device) -> Tensor:
    """Uniform [0, 1) drawn from `generator` on the CPU (generators are device-bound), moved to device."""
    return torch.rand(shape, generator=generator).to(device)


def _beta(alpha: float, n: int, generator) -> Tensor:
    """n samples of Beta(alpha, alpha). torch's gamma sampler takes no generator, so with one we seed a forked
    global RNG from it: reproducible, and the caller's global RNG state is left untouched."""
    dist = Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if generator is None:
        return dist.sample((n,))
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.sample((n,))


def mixup(
    x: Tensor, y: Tensor, alpha: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float, Tensor]:
    """x [B, ...], y [B, C] (one-hot or soft) -> (mixed x, mixed y, lam, perm); lam ~ Beta(alpha, alpha)."""
    if y.dim() != 2:
        raise ValueError(f"mixup needs soft/one-hot targets [B, C], got shape {tuple(y.shape)}")
    lam = float(_beta(alpha, 1, generator)[0])
    perm = torch.randperm(x.shape[0], generator=generator)
    x_mix = lam * x + (1.0 - lam) * x[perm.to(x.device)]
    y_mix = lam * y + (1.0 - lam) * y[perm.to(y.device)]
    return x_mix, y_mix, lam, perm


def freq_mixstyle(
    x: Tensor, p: float = 0.4, alpha: float = 0.3, eps: float = 1e-6, generator: torch.Generator | None = None
) -> Tensor:
    """x [B, C, F, T]; with probability p (once for the whole batch) each sample's per-frequency-band
    statistics (over channel and time, detached) are replaced by a mix with a random partner's."""
    if p <= 0 or float(_rand((1,), generator, "cpu")) > p:
        return x
    b = x.shape[0]
    lam = _beta(alpha, b, generator)
    return _mix_band_stats(x, lam, torch.randperm(b, generator=generator), eps)


def _mix_band_stats(x: Tensor, lam: Tensor, perm: Tensor, eps: float) -> Tensor:
    b = x.shape[0]
    f_mu = x.mean(dim=(1, 3), keepdim=True).detach()  # [B, 1, F, 1]
    f_var = x.var(dim=(1, 3), keepdim=True).detach()
    f_sig = (f_var + eps).sqrt()
    x_normed = (x - f_mu) / f_sig
    lam = lam.to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)
    perm = perm.to(x.device)
    mu_mix = f_mu * lam + f_mu[perm] * (1 - lam)
    sig_mix = f_sig * lam + f_sig[perm] * (1 - lam)
    return x_normed * sig_mix + mu_mix


def ir_bank(irs: Sequence[Tensor], device: torch.device | str = "cpu", dtype=torch.float32) -> Tensor:
    """The impulse responses as one zero-padded [K, longest] tensor on `device`, made once per training:
    dir_augment then picks kernels by indexing, with no per-clip host-to-device copy."""
    irs = [torch.as_tensor(ir).flatten() for ir in irs]
    bank = torch.zeros(len(irs), max((ir.numel() for ir in irs), default=0), dtype=dtype)
    for k, ir in enumerate(irs):
        bank[k, : ir.numel()] = ir
    return bank.to(device)


def dir_augment(
    wave: Tensor,
    device_ids: Tensor,
    irs: Sequence[Tensor] | Tensor,
    p: float = 0.6,
    device_a: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """wave [B, n]; each clip recorded by `device_a` is, with probability p, convolved with a random device
    impulse response and cut to n samples. Others stay bit-identical. `irs`: 1-D tensors at the wave's sample
    rate, or an ir_bank (trailing zeros change nothing but the fft size)."""
    out = wave.clone()
    if p <= 0 or len(irs) == 0:
        return out
    b, n = wave.shape
    device_ids = device_ids.to("cpu").view(-1)
    apply = (device_ids == device_a) & (_rand((b,), generator, "cpu") < p)
    idx = apply.nonzero().flatten()
    if idx.numel() == 0:
        return out
    choice = torch.randint(0, len(irs), (idx.numel(),), generator=generator)
    if isinstance(irs, Tensor):  # a bank, already on the device
        kernels = irs[choice.to(irs.device)].to(device=wave.device, dtype=wave.dtype)
    else:
        kernels = ir_bank([irs[k] for k in choice.tolist()], wave.device, wave.dtype)
    idx = idx.to(wave.device)
    out[idx] = _fft_convolve(wave[idx], kernels)
    return out


def _fft_convolve(wave: Tensor, kernels: Tensor) -> Tensor:
    """Each row of wave [B, n] convolved with its row of kernels [B, L], cut to n samples. An fft convolution:
    linear (not circular) as long as the fft size is at least n + L - 1; a 5-smooth size (next_fast_len) avoids
    pocketfft's slow path for sizes with large prime factors."""
    n = wave.shape[1]
    size = next_fast_len(n + kernels.shape[1] - 1, real=True)
    return torch.fft.irfft(torch.fft.rfft(wave, size) * torch.fft.rfft(kernels, size), size)[:, :n]


def freq_mask(
    x: Tensor, max_bins: int = 48, generator: torch.Generator | None = None, value: float = 0.0
) -> Tensor:
    """x [B, ..., F, T]: per sample, set a band of width ~U[0, max_bins) at a random start to `value`."""
    if max_bins <= 0:
        return x
    b = x.shape[0]
    u_width = _rand((b,), generator, "cpu")
    return band_mask(x, u_width, _rand((b,), generator, "cpu"), max_bins, value)


def band_mask(x: Tensor, u_width: Tensor, u_start: Tensor, max_bins: int, value: float = 0.0) -> Tensor:
    """freq_mask with its uniform draws given ([B] each), computed where they are."""
    b, n_freq = x.shape[0], x.shape[-2]
    width = u_width * min(max_bins, n_freq)
    start = u_start * (n_freq - width)
    lo, hi = start.floor().long(), (start + width).floor().long()
    f = torch.arange(n_freq, device=u_width.device)
    mask = (f[None, :] >= lo[:, None]) & (f[None, :] < hi[:, None])  # [B, F]
    mask = mask.view(b, *([1] * (x.dim() - 3)), n_freq, 1).to(x.device)
    return x.masked_fill(mask, value)


def roll(wave: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """wave [B, n]: each clip circularly shifted in time by its own shift ~ U{-max_shift, ..., max_shift}
    samples (the DCASE 2024 baseline rolls by up to +-0.1 s: max_shift = 0.1 * sample rate)."""
    if max_shift <= 0:
        return wave
    shift = torch.randint(-max_shift, max_shift + 1, (wave.shape[0],), generator=generator)
    return roll_by(wave, shift)


def roll_by(wave: Tensor, shift: Tensor) -> Tensor:
    """wave [B, n], each clip circularly shifted by its own shift [B] (computed where `shift` is)."""
    n = wave.shape[1]
    idx = (torch.arange(n, device=shift.device)[None, :] - shift[:, None]) % n  # out[t] = wave[t - shift]
    return wave.gather(1, idx.to(wave.device))


# ------------------------------------------------------------------------- drawn per epoch (device_augment)
def draw_epoch(
    steps: int,
    batch: int,
    generator: torch.Generator,
    *,
    max_shift: int = 0,
    n_irs: int = 0,
    fms_alpha: float = 0.3,
    mixup_alpha: float = 1.0,
) -> dict[str, Tensor]:
    """Every random number of an epoch's augmentations, one row per step ([steps, batch] or [steps]), drawn
    at once from `generator` on the host: the same distributions as the eager functions draw them.
    `step_draws` picks a step's row (on whatever device the dict was moved to)."""
    s, b = steps, batch
    g = generator
    out = {
        "dir_u": torch.rand(s, b, generator=g),  # apply DIR where < p (device a only)
        "dir_k": torch.randint(0, max(1, n_irs), (s, b), generator=g),  # which impulse response
        "fms_u": torch.rand(s, generator=g),  # FMS on this batch where <= p
        "fms_lam": _beta(fms_alpha, s * b, g).view(s, b),
        "fms_perm": torch.rand(s, b, generator=g).argsort(dim=1),  # a uniform random permutation per row
        "mix_lam": _beta(mixup_alpha, s, g),
        "mix_perm": torch.rand(s, b, generator=g).argsort(dim=1),
        "mask_w": torch.rand(s, b, generator=g),  # frequency mask width and start (front-end)
        "mask_s": torch.rand(s, b, generator=g),
    }
    if max_shift > 0:
        out["roll"] = torch.randint(-max_shift, max_shift + 1, (s, b), generator=g)
    return out


def step_draws(epoch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
    """The draws of one step: views of each tensor's row (no copy, no host round trip)."""
    return {k: v[step] for k, v in epoch.items()}


def dir_drawn(
    wave: Tensor, device_ids: Tensor, bank: Tensor, u: Tensor, k: Tensor, p: float, device_a: int = 0
) -> Tensor:
    """dir_augment with its draws given (u [B] uniform, k [B] impulse response index): every clip is
    convolved, device-`a` clips with u < p keep it (a fixed shape, where dir_augment picks clips by index)."""
    if p <= 0 or bank.shape[0] == 0:
        return wave
    apply = (device_ids.to(wave.device).view(-1) == device_a) & (u < p)
    conv = _fft_convolve(wave, bank[k].to(wave.dtype))
    return torch.where(apply[:, None], conv, wave)


def freq_mixstyle_drawn(
    x: Tensor, u: Tensor, lam: Tensor, perm: Tensor, p: float = 0.4, eps: float = 1e-6
) -> Tensor:
    """freq_mixstyle with its draws given (u scalar gate, lam [B], perm [B]): mixed where u <= p."""
    if p <= 0:
        return x
    return torch.where(u <= p, _mix_band_stats(x, lam, perm, eps), x)


def mixup_drawn(x: Tensor, y: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """mixup with its draws given (lam a 0-d tensor, perm [B])."""
    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm]


# ------------------------------------------------------------------------------- the two sources of draws
class Eager:
    """Each augmentation draws its random numbers from `generator` as it runs (the eager path)."""

    frontend = None  # the front-end's frequency masking draws from torch's global RNG

    def __init__(self, generator: torch.Generator | None):
        self.g = generator

    def roll(self, wave: Tensor, max_shift: int) -> Tensor:
        return roll(wave, max_shift, generator=self.g)

    def dir(self, wave: Tensor, device_ids: Tensor, bank: Tensor, p: float, device_a: int) -> Tensor:
        return dir_augment(wave, device_ids, bank, p=p, device_a=device_a, generator=self.g)

    def fms(self, x: Tensor, p: float, alpha: float) -> Tensor:
        return freq_mixstyle(x, p=p, alpha=alpha, generator=self.g)

    def mixup(self, x: Tensor, y: Tensor, alpha: float):
        """(mixed x, mixed y, lam, perm)"""
        return mixup(x, y, alpha=alpha, generator=self.g)


class Drawn:
    """The same augmentations from one step's draws (step_draws of draw_epoch: train.device_augment): fixed
    shapes, no host round trip."""

    def __init__(self, draws: dict[str, Tensor]):
        self.d = draws
        self.frontend = draws  # the front-end's frequency mask: its mask_w / mask_s

    def roll(self, wave: Tensor, max_shift: int) -> Tensor:
        return roll_by(wave, self.d["roll"])

    def dir(self, wave: Tensor, device_ids: Tensor, bank: Tensor, p: float, device_a: int) -> Tensor:
        return dir_drawn(wave, device_ids, bank, self.d["dir_u"], self.d["dir_k"], p, device_a)

    def fms(self, x: Tensor, p: float, alpha: float) -> Tensor:
        return freq_mixstyle_drawn(x, self.d["fms_u"], self.d["fms_lam"], self.d["fms_perm"], p=p)

    def mixup(self, x: Tensor, y: Tensor, alpha: float):
        lam, perm = self.d["mix_lam"], self.d["mix_perm"]
        return (*mixup_drawn(x, y, lam, perm), lam, perm)
