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
import warnings
from dataclasses import dataclass, replace

import torch
import torchaudio
from torch import nn

from asc_ray.augment import freq_mask

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


class LogMel(nn.Module):
    """wave [B, n] -> log-mel [B, 1, n_mels, T]; frequency masking only in .train()."""

    def __init__(self, cfg: MelConfig):
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=0.0,
            f_max=None,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.mel(wave.float())  # [B, n_mels, T], power
        if self.training and self.cfg.freqm > 0:
            x = freq_mask(x.unsqueeze(1), self.cfg.freqm).squeeze(1)
        return (x + LOG_OFFSET).log().unsqueeze(1)


class PasstMel(nn.Module):
    """hear21passt's AugmentMelSTFT, its debug print and deprecation warnings kept quiet; adds the channel dim."""

    def __init__(self, freqm: int = PASST_MEL["freqm"]):
        super().__init__()
        from hear21passt.models.preprocess import AugmentMelSTFT

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "FMAX is None setting to ..."
            self.mel = AugmentMelSTFT(**{**PASST_MEL, "freqm": freqm})

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # fmax jitter and masking happen only in training (.train()/.eval() reach self.mel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # stft(return_complex=False) deprecation
            warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.autocast deprecation
            return self.mel(wave.float()).unsqueeze(1)


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
