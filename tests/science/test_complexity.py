"""Complexity measurement, the student limits, fp16 export."""

import pytest
import torch
from torch import nn

from asc_ray.complexity import MAX_MACS, MAX_PARAM_BYTES, Complexity, check_student, export_fp16, measure
from asc_ray.errors import AscRayError
from asc_ray.models import bcbl


def test_measure_bcbl32_and_restores_mode():
    m = bcbl(32).train()
    c = measure(m, (1, 256, 65))
    assert (c.params, c.macs, c.bytes_fp16) == (61_148, 29_419_156, 122_296)
    assert c.to_dict() == {"params": 61_148, "macs": 29_419_156, "bytes_fp16": 122_296}
    assert m.training


def test_measure_counts_a_linear_layer():
    # 33 params; torchinfo counts weight and bias per output row: 2 rows x (30 + 3) = 66
    c = measure(nn.Linear(10, 3), (2, 10))
    assert (c.params, c.macs, c.bytes_fp16) == (33, 66, 66)


def test_check_student_refuses_oversized_models():
    assert MAX_PARAM_BYTES == 128_000 and MAX_MACS == 30_000_000
    check_student(Complexity(params=64_000, macs=30_000_000, bytes_fp16=128_000))  # exactly at the limits
    with pytest.raises(AscRayError, match="parameters"):
        check_student(Complexity(params=64_001, macs=1, bytes_fp16=128_002), "big")
    with pytest.raises(AscRayError, match="MACs"):
        check_student(Complexity(params=10, macs=30_000_001, bytes_fp16=20))
    # a real oversized model: 64-BCBL
    with pytest.raises(AscRayError, match="64-BCBL"):
        check_student(measure(bcbl(64), (1, 256, 65)), "64-BCBL")


def test_export_fp16_round_trip(tmp_path):
    m = bcbl(24)
    path = export_fp16(m, tmp_path / "sub" / "student.pt")
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # no leftover temporary file
    state = torch.load(path, weights_only=True)
    ref = m.state_dict()
    assert set(state) == set(ref)
    for k, v in state.items():
        if ref[k].is_floating_point():
            assert v.dtype == torch.float16
            torch.testing.assert_close(v.float(), ref[k], atol=1e-2, rtol=1e-3)
        else:
            assert torch.equal(v, ref[k])  # BN's num_batches_tracked stays an integer
    # loads back into a fresh model (upcast)
    fresh = bcbl(24)
    fresh.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
