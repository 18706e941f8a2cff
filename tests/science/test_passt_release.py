"""The PaSST loader on a file laid out as the AudioSet release checkpoint (passt-s-f128-p16-s10-ap.476-swa.pt):
hear21passt's own PaSST-S with 527 classes, saved as a plain state dict under its own key names. No network:
the weights are random, the layout is the release's. Loading it gives every backbone tensor of the file and a
new 10-class head."""

from __future__ import annotations

import pytest
import torch
from helpers.training import release_passt_state

from asc_ray.models.passt import check_checkpoint, passt

pytestmark = pytest.mark.slow  # two PaSST-S of 85 M parameters on a CPU


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    state = release_passt_state()
    assert {"cls_token", "dist_token", "time_new_pos_embed", "head.1.weight", "head_dist.weight"} <= set(
        state
    )
    path = tmp_path_factory.mktemp("passt") / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(state, path)
    return path, state


def test_the_release_layout_loads_its_backbone_and_gets_a_new_head(release_file):
    path, state = release_file
    ours = passt(pretrained=path, size="full", n_classes=10).net.state_dict()
    for key in (
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.11.mlp.fc2.bias",
        "time_new_pos_embed",
    ):
        assert torch.equal(ours[key], state[key]), key
    assert ours["head.1.weight"].shape == (10, 768) and state["head.1.weight"].shape == (527, 768)


def test_the_node_check_finds_and_loads_it(release_file, monkeypatch):
    monkeypatch.setenv("ASC_RAY_PASST_CHECKPOINT", str(release_file[0]))
    assert check_checkpoint() == release_file[0]
