import numpy as np
import pytest
import torch
from data_helpers import assert_user_error, write_wav

from asc_ray.data.irs import load_irs
from asc_ray.errors import AscRayError


def test_mixed_formats_are_mono_resampled_unit_energy(synth_dataset):
    irs = load_irs(synth_dataset / "irs", 32000)
    assert len(irs) == 5
    for ir in irs:
        assert ir.ndim == 1 and ir.dtype == torch.float32
        assert float((ir.double() ** 2).sum()) == pytest.approx(1.0, abs=1e-4)
    # ir01 is 4800 samples at 48 kHz, stereo -> 3200 samples at 32 kHz; ir02 is 640 at 16 kHz -> 1280
    assert len(irs[1]) == 3200 and len(irs[2]) == 1280


def test_missing_folder(tmp_path):
    with pytest.raises(AscRayError) as e:
        load_irs(tmp_path / "micirp", 32000)
    assert_user_error(e, "micirp", "not found")


def test_folder_without_wav(tmp_path):
    (tmp_path / "readme.txt").write_text("no irs here")
    with pytest.raises(AscRayError) as e:
        load_irs(tmp_path, 32000)
    assert_user_error(e, str(tmp_path), ".wav")


@pytest.mark.parametrize("content", [b"RIFFjunk", None], ids=["corrupt", "silent"])
def test_unusable_ir_file(tmp_path, content):
    write_wav(tmp_path / "good.wav", np.r_[1.0, np.zeros(99)] * 0.5, sr=48000)
    bad = tmp_path / "bad.wav"
    if content is None:
        write_wav(bad, np.zeros(100))
    else:
        bad.write_bytes(content)
    with pytest.raises(AscRayError) as e:
        load_irs(tmp_path, 32000)
    assert_user_error(e, "bad.wav")
