"""Front-ends: output shapes for 1 s clips, log(mel + 1e-5), frequency masking only in training."""

import math

import pytest
import torch

from asc_ray.features import FRONTENDS, build_frontend, frontend_sample_rate, input_shape


@pytest.mark.parametrize("name,shape", [("mel32k", (1, 256, 65)), ("mel44k", (1, 256, 89))])
def test_bcbl_frontend_shapes_and_config(name, shape):
    assert input_shape(name) == shape
    fe = build_frontend(name).eval()
    wave = torch.randn(2, frontend_sample_rate(name))
    out = fe(wave)
    assert out.shape == (2, *shape)
    assert torch.isfinite(out).all()
    # silence -> log(0 + 1e-5) everywhere
    torch.testing.assert_close(
        fe(torch.zeros(1, 8000)), torch.full_like(fe(torch.zeros(1, 8000)), math.log(1e-5))
    )


def test_sample_rates_and_table():
    assert frontend_sample_rate("mel32k") == 32000
    assert frontend_sample_rate("mel44k") == 44100
    assert frontend_sample_rate("passt") == 44100
    c = FRONTENDS["mel32k"]
    assert (c.n_fft, c.win_length, c.hop_length, c.n_mels, c.freqm) == (4096, 3072, 500, 256, 48)
    with pytest.raises(ValueError):
        build_frontend("mfcc")


def test_bcbl_masking_only_in_train_mode():
    torch.manual_seed(0)
    fe = build_frontend("mel32k")
    wave = torch.randn(8, 32000)
    fe.eval()
    a, b = fe(wave), fe(wave)
    assert torch.equal(a, b)  # eval: deterministic, no masking
    fe.train()
    c = fe(wave)
    floor = math.log(1e-5)
    masked = (c - floor).abs().lt(1e-4).all(dim=-1).squeeze(1)  # [B, F] bands set to log(1e-5) for all frames
    assert masked.any()
    assert masked.sum(1).max() <= 48
    # unmasked bands are exactly the eval values
    keep = ~masked[:, None, :, None].expand_as(c)
    assert torch.equal(c[keep], a[keep])


def test_passt_frontend_shape_and_train_only_jitter():
    torch.manual_seed(0)
    fe = build_frontend("passt")
    wave = torch.randn(2, 44100)
    fe.eval()
    a = fe(wave)
    assert a.shape == (2, *input_shape("passt"))
    assert a.shape[2] == 128 and 137 <= a.shape[3] <= 139
    assert torch.equal(a, fe(wave))
    fe.train()
    assert not torch.allclose(fe(wave), a)


def _masked_bands(fe, wave):
    out = fe(wave)
    return (out - math.log(1e-5)).abs().lt(1e-4).all(dim=-1).squeeze(1).sum(1)  # [B] fully masked bands


@pytest.mark.parametrize("name", ["mel32k", "mel44k"])
def test_freqm_reaches_the_front_end(name):
    """augment.freqm is what the front-end masks with: 0 = no masking, 6 = at most 6 bands."""
    torch.manual_seed(1)
    wave = torch.randn(16, frontend_sample_rate(name))
    assert _masked_bands(build_frontend(name, freqm=0).train(), wave).max() == 0
    wide = _masked_bands(build_frontend(name, freqm=200).train(), wave)
    narrow = _masked_bands(build_frontend(name, freqm=6).train(), wave)
    assert narrow.max() <= 6 and wide.max() > 48  # wider than the old hard-coded 48


def test_freqm_reaches_the_passt_front_end():
    assert isinstance(build_frontend("passt", freqm=0).mel.freqm, torch.nn.Identity)  # hear21passt: 0 = off
    assert build_frontend("passt", freqm=17).mel.freqm.mask_param == 17


def test_each_system_hears_its_own_front_end():
    """32-BCBL teachers at 44.1 kHz (256 x 89), 32-BCBL students at 32 kHz (256 x 65), the 24-BCBL at 44.1 kHz."""
    from asc_ray.systems import SYSTEMS

    for name in ("bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir"):
        s = SYSTEMS[name]
        assert s.model == "bcbl32" and frontend_sample_rate(s.frontend) == 44100
        assert input_shape(s.frontend) == (1, 256, 89)
    for name in ("kd_ensemble", "tfs", "baseline"):
        s = SYSTEMS[name]
        assert s.model == "bcbl32" and frontend_sample_rate(s.frontend) == 32000
        assert input_shape(s.frontend) == (1, 256, 65)
    assert input_shape(SYSTEMS["bcbl24"].frontend) == (1, 256, 89)
    assert all(frontend_sample_rate(SYSTEMS[n].frontend) == 44100 for n in ("passt_fms", "passt_dir"))


@pytest.mark.parametrize("name", ["mel32k", "mel44k"])
def test_log_mel_is_torchaudios_mel_spectrogram(name):
    """LogMel squares the complex STFT itself (faster on a CPU than torchaudio's |X|.pow(2)): the same log-mel as
    torchaudio's MelSpectrogram with the DCASE baseline's settings, up to float rounding."""
    from asc_ray.features import torchaudio_mel

    c = FRONTENDS[name]
    ref = torchaudio_mel(c)
    assert ref.spectrogram.power == 2.0  # the reference squares |X| itself; LogMel's own copy does not
    wave = 0.1 * torch.randn(3, c.sample_rate, generator=torch.Generator().manual_seed(0))
    want = (ref(wave) + 1e-5).log().unsqueeze(1)
    torch.testing.assert_close(build_frontend(name).eval()(wave), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_passt_front_end_is_hear21passts(mode):
    """PasstMel's own forward gives what hear21passt's AugmentMelSTFT.forward gives, with the same random draws
    (fmax jitter, frequency and time masks) taken from torch's RNG in the same order."""
    import warnings

    fe = getattr(build_frontend("passt"), mode)()
    wave = 0.3 * torch.randn(4, 44100, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    ours = fe(wave)
    rng_after_ours = torch.get_rng_state()
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's stft(return_complex=False) and cuda.amp deprecations
        lib = fe.mel(wave).unsqueeze(1)
    torch.testing.assert_close(ours, lib, atol=1e-5, rtol=0)
    assert torch.equal(rng_after_ours, torch.get_rng_state())  # same draws: the same augmentation stream
    if mode == "train":
        torch.manual_seed(4)
        assert not torch.allclose(fe(wave), ours)  # other draws, other jitter and masks
