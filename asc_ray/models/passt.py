"""PaSST teacher: the hear21passt model code behind a clean interface.

- forward(x [B, 1, 128, T]) -> logits [B, n_classes] (the package returns (logits, features)).
- The package's debug prints (shapes on the first forward, the model repr at build time) and its per-call
  "Input image size ... doesn't match model" warning are kept out of the user's output.
- Weights: the AudioSet checkpoint is looked up locally first ($ASC_RAY_PASST_CHECKPOINT, then the asc_ray
  cache), then downloaded from the PaSST release; offline without the file -> one AscRayError saying what to do.
- size="small": the same PaSST code, 2 layers of width 64, patches without overlap and no structured patchout,
  so that CPU runs train in seconds per batch and learn from a few hundred clips.
"""

from __future__ import annotations

import contextlib
import io
import os
import urllib.request
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from asc_ray.errors import AscRayError
from asc_ray.io import read_or_raise
from asc_ray.schema import Bool, Float, Int, Section, trains

ARCH = "passt_s_swa_p16_128_ap476"
CHECKPOINT_NAME = "passt-s-f128-p16-s10-ap.476-swa.pt"
CHECKPOINT_URL = f"https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/{CHECKPOINT_NAME}"
CHECKPOINT_ENV = "ASC_RAY_PASST_CHECKPOINT"
# the reference teachers' settings (SPEC "PaSST")
FSTRIDE = TSTRIDE = 10
INPUT_FDIM = 128
S_PATCHOUT_T, S_PATCHOUT_F = 0, 6
# small variant for CPU runs: same code, narrow and shallow, trained from scratch on a few hundred clips. No
# structured patchout: dropping 6 of the 12 frequency rows each step regularises the 85 M-parameter pretrained
# model, but a 2-layer model from scratch underfits with it. Patches without overlap (stride 16: 8 x 8 tokens, not
# 12 x 13): each epoch costs about half, and the epochs that buys at the same CPU teach it more than the overlap
# does (chosen on a development set: docs/benchmarks.md, "The smoke profile's PaSST teachers")
SMALL = dict(embed_dim=64, depth=2, num_heads=4, patch_size=16, stride=(16, 16))
SMALL_PATCHOUT_F = 0
SIZES = ("full", "small")


class PasstSettings(Section):
    """Config section `passt:` (configs/full.yaml): which PaSST, and how it trains."""

    size: Literal["full", "small"] = trains()
    pretrained: Bool = trains()
    epochs: Int = trains(ge=1)
    batch_size: Int = trains(ge=1)
    lr: Float = trains(gt=0)
    weight_decay: Float = trains(ge=0)
    warmup_epochs: Int = trains(
        ge=0
    )  # the learning rate's exponential warm-up (asc_ray.optim.exp_warmup_linear_down)
    rampdown_start: Int = trains(ge=0)  # the epoch its linear ramp down starts
    rampdown_epochs: Int = trains(ge=0)  # epochs it ramps down over, to last_lr x lr
    last_lr: Float = trains(ge=0, le=1)


# classifier keys the package re-initialises when the number of classes differs from the checkpoint's
HEAD_KEYS = ("head.1.weight", "head.1.bias", "head_dist.weight", "head_dist.bias")


def _passt_module():
    with contextlib.redirect_stdout(io.StringIO()):  # importing is quiet, but be safe
        from hear21passt.models import passt as module
    module.first_RUN = False  # the package prints tensor shapes on the first forward while this flag is set
    return module


class PaSSTClassifier(nn.Module):
    """Wraps a hear21passt PaSST: logits only, quiet."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # The distilled PaSST's `head_dist` is never used by its forward (it only switches it to averaging the
        # class and distillation tokens): frozen, every trainable parameter gets a gradient each step, which
        # DistributedDataParallel requires (else it stops at step 2: "Expected to have finished reduction in
        # the prior iteration"). Kept in the state_dict, so AudioSet and older checkpoints still load.
        if getattr(net, "head_dist", None) is not None:
            net.head_dist.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            # raised on every call for inputs shorter than input_tdim (1 s clips vs 998 frames): expected here
            warnings.filterwarnings("ignore", message="Input image size")
            logits, _features = self.net(x)
        return logits

    def no_weight_decay(self) -> set[str]:
        return {f"net.{n}" for n in self.net.no_weight_decay()}


def _build(size: str, n_classes: int, input_tdim: int) -> nn.Module:
    module = _passt_module()
    common = dict(
        s_patchout_t=S_PATCHOUT_T, s_patchout_f=S_PATCHOUT_F if size == "full" else SMALL_PATCHOUT_F
    )
    with contextlib.redirect_stdout(io.StringIO()):  # get_model prints "Loading ..." and the whole model
        if size == "full":
            return module.get_model(
                arch=ARCH,
                pretrained=False,
                n_classes=n_classes,
                fstride=FSTRIDE,
                tstride=TSTRIDE,
                input_fdim=INPUT_FDIM,
                input_tdim=input_tdim,
                **common,
            )
        return module.PaSST(
            img_size=(INPUT_FDIM, input_tdim),
            in_chans=1,
            num_classes=n_classes,
            distilled=True,
            **SMALL,
            **common,
        )


def passt(
    pretrained: bool | str | Path = True, size: str = "full", n_classes: int = 10, input_tdim: int = 998
) -> nn.Module:
    """PaSST teacher; pretrained: True (AudioSet checkpoint), a checkpoint path, or False (random init)."""
    if size not in SIZES:
        raise AscRayError(
            f"unknown PaSST size {size!r}",
            path="passt size",
            fix=f"use one of {', '.join(SIZES)} ('small' is meant for CPU runs).",
        )
    checkpoint = None
    if pretrained is True:
        if size != "full":
            raise AscRayError(
                "the AudioSet PaSST checkpoint only fits the full-size PaSST",
                path="passt size",
                fix="set passt.pretrained=false for the small PaSST, or use size 'full'.",
            )
        checkpoint = find_checkpoint()  # before building: a missing file fails fast
    elif pretrained is not False and pretrained is not None:
        checkpoint = Path(pretrained)
    model = PaSSTClassifier(_build(size, n_classes, input_tdim))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


# --- checkpoint files -----------------------------------------------------------------------------------------


def default_checkpoint_path() -> Path:
    return Path.home() / ".cache" / "asc_ray" / CHECKPOINT_NAME


def _download(url: str, dst: Path) -> None:
    """Fetch url to dst atomically (a .part file, then rename). Raises OSError when offline."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def find_checkpoint() -> Path:
    """$ASC_RAY_PASST_CHECKPOINT, else the asc_ray cache (downloaded there once when the network allows)."""
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path
        raise AscRayError(
            f"${CHECKPOINT_ENV} points to a file that does not exist",
            path=path,
            fix=f"put {CHECKPOINT_NAME} there (download it from {CHECKPOINT_URL} on a connected "
            f"machine), unset {CHECKPOINT_ENV}, or set passt.pretrained=false.",
        )
    path = default_checkpoint_path()
    if path.is_file():
        return path
    try:
        _download(CHECKPOINT_URL, path)
    except Exception as exc:  # noqa: BLE001 - any network failure means the same thing to the user
        raise AscRayError(
            f"the AudioSet-pretrained PaSST checkpoint is not on this machine and could not be downloaded "
            f"({type(exc).__name__}: {exc})",
            path=path,
            fix=f"download {CHECKPOINT_URL} on a connected machine and put it at {path} "
            f"(or anywhere, with {CHECKPOINT_ENV}=/path/to/{CHECKPOINT_NAME}); "
            f"or train the PaSST teachers from scratch with passt.pretrained=false.",
        ) from None
    return path


def check_checkpoint() -> Path:
    """The AudioSet checkpoint this machine would use, found (or fetched) and loaded into hear21passt's
    PaSST-S: what a PaSST teacher needs before it trains. AscRayError when it is missing or does not fit."""
    path = find_checkpoint()
    passt(pretrained=path, size="full")
    return path


def _strip_prefixes(state: dict) -> dict:
    for prefix in ("module.", "_orig_mod.", "net."):  # DDP / torch.compile / our wrapper
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load a PaSST state_dict into `model` (a PaSSTClassifier or a bare PaSST) as hear21passt does: ImageNet
    position embeddings adapted, the classifier head re-initialised when n_classes differs, time position
    embeddings cut to a shorter input_tdim. Anything else that does not fit -> AscRayError naming the file."""
    net = model.net if isinstance(model, PaSSTClassifier) else model
    path = Path(path)
    fix = (
        "pass a PaSST checkpoint saved from this architecture (e.g. passt-s-f128-p16-s10-ap.476-swa.pt for "
        "size 'full' with fstride = tstride = 10), or set passt.pretrained=false."
    )
    state = read_or_raise(
        path,
        lambda p: torch.load(p, map_location="cpu", weights_only=True),
        "PaSST checkpoint file",
        fix,
        "cannot read the PaSST checkpoint ({error})",
    )
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AscRayError("the file is not a PaSST state_dict", path=path, fix=fix)
    state = _strip_prefixes(dict(state))
    try:
        if "pos_embed" in state or "time_new_pos_embed" in state:  # else: not a ViT at all, reported below
            state = _passt_module().checkpoint_filter_fn(state, net)
    except Exception as exc:  # noqa: BLE001 - e.g. an ImageNet pos_embed that cannot be reshaped
        raise AscRayError(
            f"cannot adapt the checkpoint to PaSST ({type(exc).__name__}: {exc})", path=path, fix=fix
        ) from None

    target = net.state_dict()
    for k in HEAD_KEYS:  # another number of classes: new head, as the package does
        if k in state and k in target and state[k].shape != target[k].shape:
            del state[k]
    k = "time_new_pos_embed"
    if (
        k in state
        and k in target
        and state[k].shape[:3] == target[k].shape[:3]
        and state[k].shape[3] > target[k].shape[3]
    ):
        state[k] = state[k][..., : target[k].shape[3]]  # forward() cuts it the same way for short inputs

    missing = [k for k in target if k not in state and k not in HEAD_KEYS]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:3])})")
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise AscRayError(
            "the checkpoint does not fit this PaSST architecture: " + "; ".join(details), path=path, fix=fix
        )
    net.load_state_dict(state, strict=False)
    return model
