"""Small writers and checks for the data-layer tests (a unique module name: tests/ is not a package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(path: Path, wave: np.ndarray, sr: int = 44100, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype=subtype)
    return path


def write_tsv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


def read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def assert_user_error(excinfo, *names: str) -> None:
    """The AscRayError names the file(s) and carries a fix."""
    text = str(excinfo.value)
    for name in names:
        assert name in text, f"{name!r} not in message:\n{text}"
    assert excinfo.value.fix and "fix:" in text
