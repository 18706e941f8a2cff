"""Log-mel front-ends (SPEC "Front-ends"): nn.Modules on batched waveforms, run on the input's device.

A front-end is named for what it computes, apart from the model that reads it (System.frontend):
  mel32k  32 kHz, n_fft 4096, window 3072, hop 500, 256 mel bins -> 256 x 65: the 32-BCBL students
  mel44k  the same at 44.1 kHz -> 256 x 89: the 32-BCBL teachers and the 24-BCBL of system 1
  passt   hear21passt's AugmentMelSTFT (pre-emphasis, kaldi mel banks with a randomly jittered fmax in training,
          frequency + time masking) at 44.1 kHz -> 128 x ~138: the PaSST teachers
mel32k / mel44k are torchaudio's MelSpectrogram as in the DCASE 2024 baseline, log(mel + 1e-5), frequency masking
of up to `freqm` bins in training (on the power mel, before the log, as the baseline does: masked bins read
log(1e-5)). Resampling 44.1k -> 32k is done by the waveform cache.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass, replace

import torch
import torchaudio
from torch import nn

from asc_ray.augment import band_mask, freq_mask

LOG_OFFSET = 1e-5


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    freqm: int = 48


FRONTENDS: dict[str, MelConfig] = {
    "mel32k": MelConfig(sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256),
    "mel44k": MelConfig(sample_rate=44100, n_fft=4096, win_length=3072, hop_length=500, n_mels=256),
}
# PaSST teachers (reference: fmin_aug_range=1 -> no fmin jitter, fmax jitter of +-500 Hz, timem=20)
PASST_MEL = dict(
    n_mels=128,
    sr=44100,
    win_length=800,
    hopsize=320,
    n_fft=1024,
    freqm=48,
    timem=20,
    fmin_aug_range=1,
    fmax_aug_range=1000,
)
NAMES = ("mel32k", "mel44k", "passt")


def torchaudio_mel(cfg: MelConfig) -> torchaudio.transforms.MelSpectrogram:
    """torchaudio's MelSpectrogram (power 2) as the DCASE 2024 baseline builds it for these settings."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        win_length=cfg.win_length,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        f_min=0.0,
        f_max=None,
    )


class LogMel(nn.Module):
    """wave [B, n] -> log-mel [B, 1, n_mels, T]; frequency masking only in .train(), from torch's global RNG or
    from `draws` (a step's `mask_w` / `mask_s` of asc_ray.augment.draw_epoch: train.device_augment)."""

    def __init__(self, cfg: MelConfig):
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio_mel(cfg)
        # The STFT stays complex and forward() squares it as re^2 + im^2: torchaudio's |X|.pow(2) takes the
        # complex abs (a hypot per bin), 5x slower on a CPU and a third of the front-end's time there
        self.mel.spectrogram.power = None

    def forward(self, wave: torch.Tensor, draws: dict | None = None) -> torch.Tensor:
        spec = self.mel.spectrogram(wave.float())  # [B, n_fft // 2 + 1, T], complex
        x = self.mel.mel_scale(spec.real.square() + spec.imag.square())  # [B, n_mels, T], power
        if self.training and self.cfg.freqm > 0 and draws is not None:
            x = band_mask(x.unsqueeze(1), draws["mask_w"], draws["mask_s"], self.cfg.freqm).squeeze(1)
        elif self.training and self.cfg.freqm > 0:
            x = freq_mask(x.unsqueeze(1), self.cfg.freqm).squeeze(1)
        return (x + LOG_OFFSET).log().unsqueeze(1)


class PasstMel(nn.Module):
    """hear21passt's AugmentMelSTFT (its settings, buffers, masking and random draws), with its forward written
    out here in faster ops, and the channel dim added.

    The library's forward computes the pre-emphasis as a 2-tap conv1d and the power as a sum over a real view of
    the STFT; on a CPU those two were 60 % of its time. Here they are a difference of shifted slices and
    re^2 + im^2: the same arithmetic, the same torch random draws in the same order (fmin/fmax jitter, then
    frequency and time masking), equal to the library's output up to float rounding
    (tests/science/test_features.py). Everything else is the library's own code path. Its masks draw on the
    input's device already; with `draws` (train.device_augment) the jittered mel bank is copied to the GPU from
    pinned memory without waiting (instead of a blocking copy per step)."""

    def __init__(self, freqm: int = PASST_MEL["freqm"]):
        super().__init__()
        from hear21passt.models.preprocess import AugmentMelSTFT

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "FMAX is None setting to ..."
            self.mel = AugmentMelSTFT(**{**PASST_MEL, "freqm": freqm})

    def forward(self, wave: torch.Tensor, draws: dict | None = None) -> torch.Tensor:
        m = self.mel
        x = wave.float()
        c = m.preemphasis_coefficient.flatten()  # [-0.97, 1]: y[n] = x[n + 1] - 0.97 x[n]
        x = c[1] * x[:, 1:] + c[0] * x[:, :-1]
        spec = torch.stft(
            x,
            m.n_fft,
            hop_length=m.hopsize,
            win_length=m.win_length,
            center=True,
            normalized=False,
            window=m.window,
            return_complex=True,
        )
        x = spec.real.square() + spec.imag.square()  # power
        # the fmax jitter is drawn in eval mode too (and ignored there), as the library does: same RNG stream
        fmin = m.fmin + torch.randint(m.fmin_aug_range, (1,)).item()
        fmax = m.fmax + m.fmax_aug_range // 2 - torch.randint(m.fmax_aug_range, (1,)).item()
        if not self.training:
            fmin, fmax = m.fmin, m.fmax
        basis = _passt_mel_basis(m.n_mels, m.n_fft, m.sr, fmin, fmax)
        if draws is not None and x.is_cuda:
            basis = _pinned(basis).to(x.device, non_blocking=True)
        with torch.autocast(x.device.type, enabled=False):  # the library keeps the mel projection in fp32
            x = basis.to(x.device) @ x
        x = (x + 0.00001).log()
        if self.training:
            x = m.timem(m.freqm(x))
        return ((x + 4.5) / 5.0).unsqueeze(1)  # the library's fast normalisation


@functools.lru_cache(maxsize=1024)
def _passt_mel_basis(n_mels: int, n_fft: int, sr: int, fmin: float, fmax: float) -> torch.Tensor:
    """hear21passt's kaldi mel banks for one (fmin, fmax), padded to n_fft // 2 + 1 bins; cached: the fmax
    jitter takes one of 1000 values, and building a bank is a Python loop over bins."""
    mel_basis, _ = torchaudio.compliance.kaldi.get_mel_banks(
        n_mels, n_fft, sr, fmin, fmax, vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0
    )
    return torch.nn.functional.pad(mel_basis, (0, 1), mode="constant", value=0)


@functools.lru_cache(maxsize=1024)
def _pinned(t: torch.Tensor) -> torch.Tensor:
    """A pinned copy of a cached CPU tensor (never written again): its copy to the GPU need not wait."""
    return t.pin_memory()


def build_frontend(name: str, freqm: int = 48) -> nn.Module:
    """The front-end `name` (see the module doc) with frequency masking of up to `freqm` bins in training
    (config augment.freqm)."""
    if name == "passt":
        return PasstMel(freqm)
    if name in FRONTENDS:
        return LogMel(replace(FRONTENDS[name], freqm=freqm))
    raise ValueError(f"unknown front-end {name!r}; expected one of {NAMES}")


def frontend_sample_rate(name: str) -> int:
    if name == "passt":
        return PASST_MEL["sr"]
    if name in FRONTENDS:
        return FRONTENDS[name].sample_rate
    raise ValueError(f"unknown front-end {name!r}; expected one of {NAMES}")


@functools.cache
def input_shape(name: str) -> tuple[int, int, int]:
    """(1, n_mels, T) of the front-end's output for a 1 s clip, measured by running the front-end itself
    (eval mode) on one second of silence, as the DCASE baseline does, so it cannot drift from a formula."""
    fe = build_frontend(name).eval()
    with torch.no_grad():
        out = fe(torch.zeros(1, frontend_sample_rate(name)))
    return tuple(int(d) for d in out.shape[1:])


def describe(name: str) -> str:
    """e.g. '1x256x89 at 44.1 kHz': what a summary line shows of a front-end."""
    return "x".join(map(str, input_shape(name))) + f" at {frontend_sample_rate(name) / 1000:g} kHz"
