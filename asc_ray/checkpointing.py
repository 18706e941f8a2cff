"""Checkpoint I/O policy: when the resumable state is written, and how Ray Train gets its copy without a
second write of the same bytes.

- The resumable state (weights + optimizer state, ~1 GB for PaSST-S) is written every `train.checkpoint_every`
  epochs and at the last epoch (`is_save_epoch`); Ray is handed a checkpoint only on those epochs.
- best.pt is written only when the validation figure improved since the last checkpoint; otherwise the new
  checkpoint folder hard-links the unchanged file (`link_or_copy`: no bytes written).
- Ray Train persists a reported folder by copying it into its storage path. When that storage is a POSIX
  filesystem (local disk, NFS, EFS) `persist_by_link` hard-links the files instead: Ray still owns the
  registered checkpoint (its retention, its restore after a worker failure), and the bytes exist once. Any
  other storage (S3, GCS) gets Ray's own upload, the only copy there.
Files are never modified in place (every write is a new file renamed into place), so a hard link is a snapshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def is_save_epoch(epoch: int, epochs: int, every: int) -> bool:
    """Whether the resumable state is written after `epoch` (1-based, just finished) of `epochs`."""
    return epoch >= epochs or epoch % max(1, int(every)) == 0


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` as a new directory entry: a hard link where the filesystem allows (no bytes written),
    else a copy; via a temp name and a rename, so an existing `dst` (maybe a link to `src` itself, or a file
    another checkpoint shares) is replaced, never truncated in place."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem (EXDEV), or one without hard links
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def link_tree(src: Path, dst: Path) -> None:
    """`dst` gets every file of the folder `src`, linked (or copied) with link_or_copy."""
    src, dst = Path(src), Path(dst)
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(p, target)


def persist_by_link(checkpoint, checkpoint_dir_name: str):
    """A `checkpoint_upload_fn` for ray.train.report (Ray Train V2): the reported folder lands in the run's
    checkpoint folder as hard links when Ray's storage is a local/POSIX filesystem, else via Ray's own copy."""
    import pyarrow.fs
    import ray.train

    storage = ray.train.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem) or not isinstance(
        checkpoint.filesystem, pyarrow.fs.LocalFileSystem
    ):
        return storage.persist_current_checkpoint(checkpoint, checkpoint_dir_name)
    dest = storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    Path(dest).mkdir(parents=True, exist_ok=True)
    link_tree(Path(checkpoint.path), Path(dest))
    return ray.train.Checkpoint(path=dest, filesystem=storage.storage_filesystem)


def tree_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, each inode counted once (hard links share their bytes)."""
    seen, total = set(), 0
    for p in Path(folder).rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
