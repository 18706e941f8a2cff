import numpy as np
import pytest
from data_helpers import assert_user_error, write_wav

from asc_ray.data.audio import read_wav
from asc_ray.errors import AscRayError


def test_reads_float32_mono(tmp_path):
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 44100)
    x = read_wav(write_wav(tmp_path / "a.wav", wave))
    assert x.dtype == np.float32 and x.shape == (44100,)
    assert np.abs(x - wave).max() < 2 / 32768


def test_stereo_is_mixed_down(tmp_path):
    left, right = np.full(44100, 0.5), np.full(44100, -0.25)
    x = read_wav(write_wav(tmp_path / "s.wav", np.stack([left, right], 1)))
    assert x.shape == (44100,) and np.allclose(x, 0.125, atol=1e-4)


def test_one_sample_off_is_padded_or_trimmed(tmp_path):
    assert read_wav(write_wav(tmp_path / "short.wav", np.ones(44099) * 0.1)).shape == (44100,)
    assert read_wav(write_wav(tmp_path / "long.wav", np.ones(44101) * 0.1)).shape == (44100,)
    assert read_wav(write_wav(tmp_path / "any.wav", np.ones(500) * 0.1), expected_seconds=None).shape == (
        500,
    )


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: None, ["not found"]),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage not a wav"), ["cannot read"]),
        (lambda p: p.write_bytes(b""), ["cannot read"]),
        (lambda p: write_wav(p, np.zeros(0)), ["empty"]),
        (lambda p: write_wav(p, np.zeros(48000), sr=48000), ["48000 Hz", "44100 Hz"]),
        (lambda p: write_wav(p, np.zeros(22050)), ["22050 samples", "truncated"]),
    ],
    ids=["missing", "garbage", "zero-bytes", "no-samples", "wrong-rate", "wrong-length"],
)
def test_bad_files_name_the_file_and_the_fix(tmp_path, make, words):
    path = tmp_path / "audio" / "bad-clip.wav"
    path.parent.mkdir()
    make(path)
    with pytest.raises(AscRayError) as e:
        read_wav(path)
    assert_user_error(e, str(path), *words)


def test_truncated_file(tmp_path):
    path = write_wav(tmp_path / "t.wav", np.zeros(44100))
    path.write_bytes(path.read_bytes()[: 44 + 2 * 30000])  # a download cut short
    with pytest.raises(AscRayError) as e:
        read_wav(path)
    assert_user_error(e, str(path))
