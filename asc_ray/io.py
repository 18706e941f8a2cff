"""Atomic file writes: the one helper every output goes through.

A temporary file in the same folder, then os.replace, so an interrupted run never leaves a half-written
file that a resume would trust (results, logits tables, checkpoints, exports, plots).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[io.IOBase], None], binary: bool = False) -> Path:
    """Write via `write(file)` into a temp file beside `path`, then rename over it; no temp is left on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def atomic_torch_save(path: str | Path, obj: object) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)
