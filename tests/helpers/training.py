"""A Trainer on a dataset, set up the way every unit sets one up (asc_ray.train.prepare_data, then Trainer): the
one place tests build one (the `make_trainer` fixture wraps it)."""

from __future__ import annotations

from pathlib import Path

# a tiny, fast training: 2 epochs of 16-clip batches, one thread, no floor of steps
TINY = [
    "bcbl.epochs=2",
    "teachers.bcbl_epochs=0",
    "bcbl.batch_size=16",
    "train.num_threads=1",
    "train.min_steps=0",
]


def new_trainer(
    data_dir: Path,
    work: Path,
    system: str = "baseline",
    split: int = 100,
    overrides=(),
    out: Path | None = None,
    profile: str = "smoke",
    logits=None,
    cache_dir: Path | None = None,
    **kwargs,
):
    """A Trainer of `system` on `split` (TINY settings, then `overrides`), its unit folder `out` (default
    work/<system>), the waveform cache in `cache_dir` (default work/cache), its log lines in `trainer.logs`
    unless a `log` is given."""
    from asc_ray.config import load_config
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, prepare_data

    cache = [f"data.cache_dir={cache_dir}"] if cache_dir else []
    cfg = load_config(profile, None, [*TINY, *cache, *overrides])
    s = get_system(system)
    data = prepare_data(cfg, data_dir, work, split, s, logits, progress=False)
    logs: list[str] = []
    kwargs.setdefault("log", logs.append)
    t = Trainer(s, cfg, data, out or Path(work) / system, split, **kwargs)
    t.logs = logs
    return t


def release_passt_state() -> dict:
    """A state dict in the AudioSet release checkpoint's layout (passt-s-f128-p16-s10-ap.476-swa.pt):
    hear21passt's own 527-class PaSST-S for 998 frames, under its own key names, random weights (no network)."""
    import contextlib
    import io

    from hear21passt.models.passt import get_model

    from asc_ray.models.passt import ARCH, FSTRIDE, INPUT_FDIM, TSTRIDE

    with contextlib.redirect_stdout(io.StringIO()):  # hear21passt prints its architecture
        model = get_model(
            arch=ARCH,
            pretrained=False,
            n_classes=527,
            fstride=FSTRIDE,
            tstride=TSTRIDE,
            input_fdim=INPUT_FDIM,
            input_tdim=998,
        )
    return model.state_dict()
