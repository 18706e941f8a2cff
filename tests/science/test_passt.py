"""PaSST wrapper: logits only, quiet, small variant trains, checkpoint loading and the offline error."""

import importlib

import pytest
import torch

from asc_ray.errors import AscRayError
from asc_ray.models import passt

# the submodule (asc_ray.models.passt as an attribute is the factory function, which shadows it)
passt_module = importlib.import_module("asc_ray.models.passt")

T = 139  # frames of a 1 s clip at 44.1 kHz, hop 320


@pytest.fixture(autouse=True)
def no_real_checkpoint(monkeypatch, tmp_path):
    # never find a real cached checkpoint, never touch the network
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(passt_module.CHECKPOINT_ENV, raising=False)

    def offline(url, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(passt_module, "_download", offline)


def test_full_passt_builds_with_spec_param_count(capsys):
    m = passt(pretrained=False, size="full")
    assert sum(p.numel() for p in m.parameters()) == 85_358_612
    assert capsys.readouterr().out == ""  # the package's prints are silenced


def test_small_passt_forward_quiet_and_trains(capsys):
    torch.manual_seed(0)
    m = passt(pretrained=False, size="small", n_classes=10)
    x = torch.randn(4, 1, 128, T)
    y = torch.tensor([0, 1, 2, 3])
    m.eval()
    out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        torch.manual_seed(1)  # same structured patchout both times: compare like with like
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    assert capsys.readouterr().out == ""


def test_checkpoint_round_trip_and_new_head(tmp_path):
    torch.manual_seed(0)
    src = passt(pretrained=False, size="small", n_classes=10)
    path = tmp_path / "small.pt"
    torch.save(src.state_dict(), path)
    x = torch.randn(2, 1, 128, T)
    loaded = passt(pretrained=path, size="small", n_classes=10).eval()
    torch.testing.assert_close(loaded(x), src.eval()(x))
    # bare PaSST keys (no wrapper prefix) and a different number of classes: the body loads, the head is new
    torch.save(src.net.state_dict(), tmp_path / "bare.pt")
    five = passt(pretrained=str(tmp_path / "bare.pt"), size="small", n_classes=5)
    torch.testing.assert_close(five.net.blocks[0].attn.qkv.weight, src.net.blocks[0].attn.qkv.weight)
    assert five.net.head[1].weight.shape == (5, 64)
    # a checkpoint trained for longer inputs: time position embeddings are cut, as the package's forward does
    short = passt(pretrained=path, size="small", n_classes=10, input_tdim=T)
    torch.testing.assert_close(
        short.net.time_new_pos_embed,
        src.net.time_new_pos_embed[..., : short.net.time_new_pos_embed.shape[-1]],
    )


def test_wrong_checkpoint_raises_naming_the_file(tmp_path):
    torch.manual_seed(0)
    src = passt(pretrained=False, size="small")
    state = src.state_dict()
    state["net.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "wrong_shape.pt"
    torch.save(state, bad)
    with pytest.raises(AscRayError, match="wrong shape") as e:
        passt(pretrained=bad, size="small")
    assert str(bad) in str(e.value)

    other = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), other)
    with pytest.raises(AscRayError, match="does not fit") as e:
        passt(pretrained=other, size="small")
    assert str(other) in str(e.value)

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(AscRayError, match="cannot read"):
        passt(pretrained=junk, size="small")
    with pytest.raises(AscRayError, match="not found"):
        passt(pretrained=tmp_path / "missing.pt", size="small")


def test_offline_without_checkpoint_gives_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(AscRayError) as e:
        passt(pretrained=True, size="full")
    msg = str(e.value)
    assert passt_module.CHECKPOINT_URL in msg
    assert passt_module.CHECKPOINT_ENV in msg and "passt.pretrained=false" in msg
    assert str(tmp_path / "home" / ".cache" / "asc_ray" / passt_module.CHECKPOINT_NAME) in msg
    # the env var pointing nowhere is reported as such
    monkeypatch.setenv(passt_module.CHECKPOINT_ENV, str(tmp_path / "nowhere.pt"))
    with pytest.raises(AscRayError, match="does not exist") as e:
        passt(pretrained=True, size="full")
    assert "nowhere.pt" in str(e.value)


def test_find_checkpoint_order(tmp_path, monkeypatch):
    cached = passt_module.default_checkpoint_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert passt_module.find_checkpoint() == cached
    env_file = tmp_path / "mine.pt"
    env_file.write_bytes(b"x")
    monkeypatch.setenv(passt_module.CHECKPOINT_ENV, str(env_file))
    assert passt_module.find_checkpoint() == env_file


def test_unknown_size():
    with pytest.raises(AscRayError, match="size"):
        passt(pretrained=False, size="tiny")


@pytest.mark.parametrize("pretrained_head", [False, True])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, pretrained_head):
    """DistributedDataParallel needs it (else "Expected to have finished reduction in the prior iteration" at
    the second step): the distilled head the forward never uses is frozen, and stays in the state_dict."""
    m = passt(pretrained=False, size="small", n_classes=10)
    if pretrained_head:  # a checkpoint round trip keeps it frozen and loadable
        torch.save(m.state_dict(), tmp_path / "w.pt")
        m = passt(pretrained=tmp_path / "w.pt", size="small", n_classes=10)
    m.train()
    m(torch.randn(2, 1, 128, T)).sum().backward()
    no_grad = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert [n for n, p in m.named_parameters() if not p.requires_grad] == [
        "net.head_dist.weight",
        "net.head_dist.bias",
    ]
    assert "net.head_dist.weight" in m.state_dict()
