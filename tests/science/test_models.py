"""N-BCBL: the published complexity exactly, shapes, channels_last."""

import pytest
import torch
import torchinfo

from asc_ray.complexity import check_student, measure
from asc_ray.features import input_shape
from asc_ray.models import bcbl


@pytest.mark.parametrize("n,t,params,macs", [(32, 65, 61_148, 29_419_156), (24, 89, 35_062, 22_649_568)])
def test_bcbl_published_complexity(n, t, params, macs):
    s = torchinfo.summary(bcbl(n), input_size=(1, 1, 256, t), verbose=0)
    assert s.total_params == params
    assert s.total_mult_adds == macs


def test_bcbl_students_pass_the_limits():
    for n, fe in ((32, "mel32k"), (24, "mel44k")):
        c = measure(bcbl(n), input_shape(fe))
        check_student(c, f"{n}-BCBL")  # must not raise


def test_bcbl_channels_and_output_shape():
    m = bcbl(32, n_classes=7)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [convs[0].out_channels, convs[1].out_channels] == [8, 32]
    assert m(torch.randn(3, 1, 256, 65)).shape == (3, 7)
    assert bcbl(24)(torch.randn(2, 1, 256, 89)).shape == (2, 10)


@pytest.mark.parametrize("train", [False, True])
def test_bcbl_channels_last_equals_contiguous(train):
    torch.manual_seed(0)
    m = bcbl(32).train(train)
    x = torch.randn(4, 1, 256, 65)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
