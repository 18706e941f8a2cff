"""Checkpoint bytes written per epoch, before and after issue 12, for a PaSST teacher and a student.

The real Trainer (full-profile model and optimizer: PaSST-S for passt_dir, 32-BCBL for the baseline student,
which kd_ensemble and tfs share) takes one real optimizer step at batch 2 on a tiny synthetic set, so the
checkpoint carries Adam's state as in training. Then:

  before   every epoch: checkpoint.pt + best.pt into checkpoint/ (best.pt copied when unchanged), and Ray's copy
           of that folder into its storage path: 2 x (checkpoint.pt + best.pt) per epoch, from the sizes of the
           files the real Trainer.save_checkpoint writes.
  after    the epochs replayed through the real code: Trainer.save_checkpoint every `--every` epochs and at the
           end, best.pt only when the best model changed, and Ray's copy made as asc_ray.pipeline.teachers
           .persist_by_link makes it on a filesystem storage path (hard links). Bytes written = the sizes of
           the new files (new inodes) that appear, over the whole run, divided by the epochs. Worst case for
           best.pt: the validation figure improves every epoch.

    python bench/checkpoint_io.py [--system passt_dir] [--epochs 25] [--every 5] [--passt-size full]

Prints `<figure> <value>` lines (MB), the headline (after, per epoch) last.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import figure, footer, header

MB = 1e6


def live_files(folders: list[Path]) -> dict[tuple[int, int], int]:
    """(device, inode) -> size of every file under `folders` (hard links are one entry)."""
    out = {}
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                st = p.stat()
                out[(st.st_dev, st.st_ino)] = st.st_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="passt_dir")
    ap.add_argument("--epochs", type=int, default=None, help="default: the full profile's for the system")
    ap.add_argument(
        "--every", type=int, default=None, help="default: the full profile's train.checkpoint_every"
    )
    ap.add_argument("--passt-size", default="full", choices=("full", "small"))
    ap.add_argument("--data-dir", default=None, help="default: a tiny synthetic set in a temp dir")
    a = ap.parse_args()
    header(f"checkpoint_io {a.system}")
    import torch

    from asc_ray.config import load_config
    from asc_ray.data.synth import generate
    from asc_ray.systems import epochs as system_epochs
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, is_save_epoch, link_tree, prepare_data

    s = get_system(a.system)
    tmp = Path(tempfile.mkdtemp(prefix="asc_ray_bench_"))
    try:
        data_dir = Path(a.data_dir) if a.data_dir else generate(tmp / "tau", clips_per_class=4, seed=0)
        cfg = load_config(
            "full",
            None,
            [
                "passt.pretrained=false",  # the weights' values do not change the bytes; no download
                f"passt.size={a.passt_size}",
                f"{s.family}.batch_size=2",
                *([f"train.checkpoint_every={a.every}"] if a.every else []),
            ],
        )
        epochs = a.epochs or system_epochs(s, cfg)
        every = cfg.train.checkpoint_every
        data = prepare_data(cfg, data_dir, tmp / "out", 100, s, progress=False)
        t = Trainer(s, cfg, data, tmp / "unit", 100, log=lambda m: None)
        t.model.train()
        batch = next(iter(t.batches))
        x, y, zt = t.prepare_inputs(batch, torch.Generator().manual_seed(0))
        loss = torch.nn.functional.cross_entropy(t.net(x), y)
        loss.backward()
        t.opt.step()  # Adam's moments now exist: the checkpoint's real size

        # sizes of what the real save_checkpoint writes
        t.epoch = 1
        folder = t.save_checkpoint()
        ckpt_b, best_b = (folder / "checkpoint.pt").stat().st_size, (folder / "best.pt").stat().st_size
        shutil.rmtree(tmp / "unit")
        figure("checkpoint_pt_mb", ckpt_b / MB, ".1f")
        figure("best_pt_mb", best_b / MB, ".1f")
        figure("epochs", epochs, "d")
        figure("checkpoint_every", every, "d")
        before = 2 * (ckpt_b + best_b)
        figure("before_mb_per_epoch", before / MB, ".1f")
        figure("before_mb_per_run", before * epochs / MB, ".1f")

        # after: the epochs replayed through the real code, best improving every epoch (the worst case)
        # the same trainer (its Adam state included), from a clean folder
        ray_dir, written = tmp / "ray_results", 0
        folders = [tmp / "unit", ray_dir]
        for e in range(1, epochs + 1):
            t.epoch = e
            save = is_save_epoch(e, epochs, every)
            t.checkpoints.selection.offer(e - 1, e / epochs, t.model, save)
            if save:
                # every new file is created while the older ones still exist (they are removed after), so
                # the files not there before are the bytes written (an inode number may be reused later)
                before_save = live_files(folders)
                folder = t.save_checkpoint()
                old = sorted(ray_dir.glob("checkpoint_*"))
                link_tree(folder, ray_dir / f"checkpoint_{e:06d}")  # persist_by_link on a filesystem
                for o in old:  # CheckpointConfig(num_to_keep=1)
                    shutil.rmtree(o)
                written += sum(n for k, n in live_files(folders).items() if k not in before_save)
        figure("after_mb_per_run", written / MB, ".1f")
        footer()
        figure("after_mb_per_epoch", written / epochs / MB, ".2f")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
