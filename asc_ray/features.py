"""Log-mel front-ends (SPEC "Front-ends"): nn.Modules on batched waveforms, run on the input's device.

bcbl32 / bcbl24: torchaudio MelSpectrogram as in the DCASE 2024 baseline, log(mel + 1e-5), frequency masking of up
to 48 bins in training (on the power mel, before the log, as the baseline does: masked bins read log(1e-5)).
passt: hear21passt's AugmentMelSTFT (pre-emphasis, kaldi mel banks with a randomly jittered fmax in training,
frequency + time masking), the PaSST teachers' front-end. Resampling 44.1k -> 32k is done by the waveform cache.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

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
    "bcbl32": MelConfig(sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256),
    "bcbl24": MelConfig(sample_rate=44100, n_fft=4096, win_length=3072, hop_length=500, n_mels=256),
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
NAMES = ("bcbl32", "bcbl24", "passt")


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

    def __init__(self):
        super().__init__()
        from hear21passt.models.preprocess import AugmentMelSTFT

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "FMAX is None setting to ..."
            self.mel = AugmentMelSTFT(**PASST_MEL)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # fmax jitter and masking happen only in training (.train()/.eval() reach self.mel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # stft(return_complex=False) deprecation
            warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.autocast deprecation
            return self.mel(wave.float()).unsqueeze(1)


def build_frontend(name: str) -> nn.Module:
    if name == "passt":
        return PasstMel()
    if name in FRONTENDS:
        return LogMel(FRONTENDS[name])
    raise ValueError(f"unknown front-end {name!r}; expected one of {NAMES}")


def frontend_sample_rate(name: str) -> int:
    if name == "passt":
        return PASST_MEL["sr"]
    if name in FRONTENDS:
        return FRONTENDS[name].sample_rate
    raise ValueError(f"unknown front-end {name!r}; expected one of {NAMES}")


def input_shape(name: str) -> tuple[int, int, int]:
    """(1, n_mels, T) of the front-end's output for a 1 s clip (centred STFT: T = n // hop + 1)."""
    if name == "passt":  # the pre-emphasis filter drops one sample before the STFT
        return (1, PASST_MEL["n_mels"], (PASST_MEL["sr"] - 1) // PASST_MEL["hopsize"] + 1)
    if name in FRONTENDS:
        c = FRONTENDS[name]
        return (1, c.n_mels, c.sample_rate // c.hop_length + 1)
    raise ValueError(f"unknown front-end {name!r}; expected one of {NAMES}")
