"""Front-ends: output shapes for 1 s clips, log(mel + 1e-5), frequency masking only in training."""

import math

import pytest
import torch

from asc_ray.features import FRONTENDS, build_frontend, frontend_sample_rate, input_shape


@pytest.mark.parametrize("name,shape", [("bcbl32", (1, 256, 65)), ("bcbl24", (1, 256, 89))])
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
    assert frontend_sample_rate("bcbl32") == 32000
    assert frontend_sample_rate("bcbl24") == 44100
    assert frontend_sample_rate("passt") == 44100
    c = FRONTENDS["bcbl32"]
    assert (c.n_fft, c.win_length, c.hop_length, c.n_mels, c.freqm) == (4096, 3072, 500, 256, 48)
    with pytest.raises(ValueError):
        build_frontend("mfcc")


def test_bcbl_masking_only_in_train_mode():
    torch.manual_seed(0)
    fe = build_frontend("bcbl32")
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
