"""Files in and out: atomic writes every output goes through, and reading a file or saying why not.

A write goes to a temporary file in the same folder, then os.replace, so an interrupted run never leaves a
half-written file that a resume would trust (results, logits tables, checkpoints, exports, plots).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from asc_ray.errors import AGAIN, AscRayError

T = TypeVar("T")


def read_or_raise(
    path: str | Path, read: Callable[[Path], T], what: str, fix: str, unreadable: str = "{what} is unreadable"
) -> T:
    """`read(path)`, or one AscRayError naming the file: "<what> not found", or `unreadable` (it may use
    {what} and {error}, the first line of what the reader raised) when the reader fails."""
    path = Path(path)
    if not path.is_file():
        raise AscRayError(f"{what} not found", path=path, fix=fix)
    try:
        return read(path)
    except AscRayError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader raises its own types for a corrupt file
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise AscRayError(unreadable.format(what=what, error=error), path=path, fix=fix) from None


YAML_ERROR = "{what} is not valid YAML at line {line}, column {column}: {problem}"


def read_yaml(path: str | Path, what: str, missing_fix: str):
    """A YAML file's content ({} when empty), or one AscRayError: not found (`missing_fix`), unreadable, or
    not YAML, with the line and column where the parser stopped and where the broken construct began."""

    def load(p: Path):
        try:
            return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as e:
            raise AscRayError(
                f"{what} is unreadable: {e}",
                path=p,
                fix="make it a readable UTF-8 text file of `key: value` lines",
            ) from None
        except yaml.YAMLError as e:
            mark, start = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
            line, column = (mark.line + 1, mark.column + 1) if mark else ("?", "?")
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            if start and getattr(e, "context", None):
                problem += f" ({e.context} at line {start.line + 1}, column {start.column + 1})"
            raise AscRayError(
                YAML_ERROR.format(what=what, line=line, column=column, problem=problem),
                path=p,
                fix=f"correct line {line} of the file (indentation, `key: value` with a space after the "
                "colon, closed brackets and quotes), then run again",
            ) from None

    return read_or_raise(path, load, what, missing_fix)


def atomic_write(path: str | Path, write: Callable[[io.IOBase], None], binary: bool = False) -> Path:
    """Write via `write(file)` into a temp file beside `path`, then rename over it; no temp is left on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    written = 0
    try:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            try:
                write(f)
            except OSError:
                written = f.tell()  # what the write had produced when it failed, buffered bytes included
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        written = max(written, Path(tmp).stat().st_size if Path(tmp).exists() else 0)
        Path(tmp).unlink(missing_ok=True)
        if e.errno in _FULL:
            raise explain_write_error(e, path, written) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


# a full disk's message ({need}: NEEDS, or "needs more space" when the size is unknown)
FULL = "{what} while writing: this file {need}, {free} free"
NEEDS = "needs at least {size}"


def explain_write_error(e: OSError, path: str | Path, needed: int | None = None) -> Exception:
    """A full disk (ENOSPC) or quota (EDQUOT) as an AscRayError naming the path, the space this write
    needed (`needed` bytes: what it had written when the disk filled, or an estimate) and what is free;
    any other OSError is returned unchanged."""
    if e.errno not in _FULL:
        return e
    path = Path(path)
    try:
        free = _mb(shutil.disk_usage(path.parent).free)
    except OSError:
        free = "unknown"
    need = NEEDS.format(size=_mb(needed)) if needed else "needs more space"
    what = "quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
    return AscRayError(
        FULL.format(what=what, need=need, free=free),
        path=path,
        fix=f"free space on the file system of {path.parent} (or raise the quota; a different "
        f"--output-dir / storage_path on a larger disk works too, but starts over), then {AGAIN}: "
        "finished units are kept and the interrupted one resumes from its last checkpoint",
    )


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def atomic_torch_save(path: str | Path, obj: object) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)
