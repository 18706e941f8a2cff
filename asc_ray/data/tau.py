"""TAU Urban Acoustic Scenes 2022 Mobile: meta.csv, the DCASE 2024 split files, the evaluation set.

Layout (development set):
    root/meta.csv                 tab-separated: filename  scene_label  identifier  source_label
    root/audio/<scene>-<city>-<location>-<segment>-<chunk>-<device>.wav
    split5.csv ... split100.csv, test.csv   tab-separated: filename  scene_label
The split files are release files of the official baseline; users bring them and put them either in the
data root or in root/split_setup/ (or anywhere, given as split_dir).

Everything the user brings is validated here, so that later stages can trust file names and labels.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asc_ray.errors import AscRayError

SCENES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
N_CLASSES = len(SCENES)
SCENE_INDEX: dict[str, int] = {s: i for i, s in enumerate(SCENES)}
DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
DEVICE_INDEX: dict[str, int] = {d: i for i, d in enumerate(DEVICES)}
DEVICE_GROUP: dict[str, str] = {
    **{d: "real" for d in ("a", "b", "c")},
    **{d: "seen" for d in ("s1", "s2", "s3")},
    **{d: "unseen" for d in ("s4", "s5", "s6")},  # simulated devices that appear only in test
}
SPLITS = (5, 10, 25, 50, 100)

META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
SPLIT_SUBDIR = "split_setup"
GET_SPLITS = (
    "download split5.csv ... split100.csv and test.csv from the release files of "
    "https://github.com/CPJKU/dcase2024_task1_baseline and put them in the data directory "
    "(or its split_setup/ folder), or pass their folder as split_dir"
)


@dataclass(frozen=True)
class Clip:
    filename: str  # as in meta.csv, e.g. "audio/airport-lisbon-1000-40000-0-a.wav"
    scene_label: str
    identifier: str  # "<city>-<location>": one recording place; never split between train and test
    city: str
    device: str
    device_group: str  # real | seen | unseen


def parse_filename(filename: str) -> tuple[str, str, str, str, str, str]:
    """'audio/<scene>-<city>-<location>-<segment>-<chunk>-<device>.wav' -> its six fields.

    Scenes use '_' (street_traffic), never '-', so the name splits into exactly six '-' fields.
    """
    stem = Path(filename).name
    if not stem.endswith(".wav"):
        raise ValueError(f"not a .wav file name: {filename!r}")
    parts = stem[: -len(".wav")].split("-")
    if len(parts) != 6 or not all(parts):
        raise ValueError(
            f"expected <scene>-<city>-<location>-<segment>-<chunk>-<device>.wav, got {filename!r}"
        )
    scene, city, location, segment, chunk, device = parts
    return scene, city, location, segment, chunk, device


def _normalise(filename: str) -> str:
    """Split/eval files sometimes list bare names: use the meta.csv form 'audio/x.wav'."""
    filename = filename.strip().replace("\\", "/")
    return filename if filename.startswith("audio/") else f"audio/{Path(filename).name}"


def _read_table(path: Path, required: Sequence[str], what: str, fix: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a tab-separated file with a header, as (line number, row); checks the required columns."""
    if not path.is_file():
        raise AscRayError(f"{what} not found", path=path, fix=fix)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise AscRayError(f"{what} is empty (no header line)", path=path, fix=fix)
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise AscRayError(
                    f"{what} lacks column(s) {missing}: header is {header} (is it tab-separated?)",
                    path=path,
                    fix=f"use a tab-separated file whose header has {list(required)}; {fix}",
                )
            cols = {c: header.index(c) for c in header}
            rows = []
            for line, values in enumerate(reader, start=2):
                if not values or all(not v.strip() for v in values):
                    continue  # blank line
                if len(values) < len(header):
                    raise AscRayError(
                        f"{what} line {line} has {len(values)} field(s), the header has {len(header)}",
                        path=path,
                        fix=f"repair line {line} (tab-separated {header}); {fix}",
                    )
                rows.append((line, {c: values[i].strip() for c, i in cols.items()}))
    except UnicodeDecodeError as e:
        raise AscRayError(f"{what} is not a UTF-8 text file ({e.reason})", path=path, fix=fix) from None
    return rows


class TauDataset:
    """meta.csv of a TAU22 development set, validated, with access to its split files."""

    def __init__(self, root: Path, split_dir: Path, clips: dict[str, Clip], split_dirs: list[Path]):
        self.root = root
        self.split_dir = split_dir
        self.clips = clips
        self._split_dirs = split_dirs  # where split files are looked for, in order

    @classmethod
    def open(cls, root: str | Path, split_dir: str | Path | None = None) -> TauDataset:
        """Read and validate root/meta.csv.

        Split files (split{N}.csv, test.csv) are looked for in `split_dir` if given; otherwise in `root/`
        first, then in `root/split_setup/`. `split_dir` (the attribute) is the first of those folders that
        holds any split file (or `root` when none does yet).
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise AscRayError(
                "data directory not found",
                path=root,
                fix="point data_dir at the TAU22 development set (the folder with meta.csv and audio/), "
                "or make a small synthetic one: asc-ray synth --out DIR",
            )
        meta = root / "meta.csv"
        rows = _read_table(
            meta,
            META_COLUMNS,
            "meta.csv",
            fix="use the meta.csv shipped with TAU Urban Acoustic Scenes 2022 Mobile (development set) "
            "in the data directory",
        )
        clips: dict[str, Clip] = {}
        for line, r in rows:
            fn, scene, ident, device = r["filename"], r["scene_label"], r["identifier"], r["source_label"]
            where = f"meta.csv line {line}"
            if scene not in SCENE_INDEX:
                raise AscRayError(
                    f"{where}: unknown scene label {scene!r}",
                    path=meta,
                    fix=f"scene labels must be one of {list(SCENES)}",
                )
            if device not in DEVICE_GROUP:
                raise AscRayError(
                    f"{where}: unknown device (source_label) {device!r}",
                    path=meta,
                    fix=f"devices must be one of {list(DEVICES)}",
                )
            try:
                _, city, *_ = parse_filename(fn)
            except ValueError as e:
                raise AscRayError(
                    f"{where}: {e}", path=meta, fix="keep the TAU22 file names unchanged"
                ) from None
            if fn in clips:
                raise AscRayError(f"{where}: {fn} is listed twice", path=meta, fix="remove the duplicate row")
            clips[fn] = Clip(fn, scene, ident, city, device, DEVICE_GROUP[device])
        if not clips:
            raise AscRayError("meta.csv lists no clips", path=meta, fix="use the complete TAU22 meta.csv")

        if split_dir is not None:
            split_dirs = [Path(split_dir).expanduser()]
            if not split_dirs[0].is_dir():
                raise AscRayError("split folder not found", path=split_dirs[0], fix=GET_SPLITS)
        else:
            split_dirs = [root, root / SPLIT_SUBDIR]
        names = [f"split{n}.csv" for n in SPLITS] + ["test.csv"]
        found = [d for d in split_dirs if any((d / n).is_file() for n in names)]
        return cls(root, found[0] if found else split_dirs[0], clips, split_dirs)

    # --- split files ---
    def split_path(self, name: str) -> Path:
        for d in self._split_dirs:
            if (d / name).is_file():
                return d / name
        looked = " and ".join(str(d) for d in self._split_dirs)
        raise AscRayError(
            f"split file {name} not found (looked in {looked})",
            path=self._split_dirs[0] / name,
            fix=GET_SPLITS,
        )

    def _read_split(self, name: str, need_labels: bool = True) -> list[str]:
        path = self.split_path(name)
        rows = _read_table(
            path, ("filename", "scene_label") if need_labels else ("filename",), name, GET_SPLITS
        )
        files: list[str] = []
        seen: set[str] = set()
        for line, r in rows:
            fn = r["filename"] if r["filename"] in self.clips else _normalise(r["filename"])
            where = f"{name} line {line}"
            if fn not in self.clips:
                raise AscRayError(
                    f"{where}: {r['filename']} is not in meta.csv",
                    path=path,
                    fix=f"use split files that belong to this dataset ({self.root / 'meta.csv'}); "
                    + GET_SPLITS,
                )
            label = r.get("scene_label")
            if label is not None:
                if label not in SCENE_INDEX:
                    raise AscRayError(
                        f"{where}: unknown scene label {label!r}",
                        path=path,
                        fix=f"scene labels must be one of {list(SCENES)}",
                    )
                if label != self.clips[fn].scene_label:
                    raise AscRayError(
                        f"{where}: {fn} is labelled {label!r} but meta.csv says {self.clips[fn].scene_label!r}",
                        path=path,
                        fix="use split files and meta.csv from the same release",
                    )
            if fn in seen:
                raise AscRayError(f"{where}: {fn} is listed twice", path=path, fix="remove the duplicate row")
            seen.add(fn)
            files.append(fn)
        if not files:
            raise AscRayError(f"{name} lists no clips", path=path, fix=GET_SPLITS)
        return files

    def split_files(self, split: int) -> list[str]:
        """Training files of split{split}.csv (5, 10, 25, 50 or 100 % of the train fold), validated."""
        if split not in SPLITS:
            raise AscRayError(f"unknown split {split!r}", fix=f"choose one of {list(SPLITS)}")
        return self._read_split(f"split{split}.csv")

    def test_files(self) -> list[str]:
        """Files of test.csv (the development test fold), validated; labels come from meta.csv."""
        return self._read_split("test.csv", need_labels=False)

    # --- per-file access ---
    def _clip(self, filename: str) -> Clip:
        try:
            return self.clips[filename]
        except KeyError:
            raise AscRayError(
                f"{filename} is not in meta.csv",
                path=self.root / "meta.csv",
                fix="use file names exactly as meta.csv lists them ('audio/...wav')",
            ) from None

    def audio_path(self, filename: str) -> Path:
        return self.root / filename

    def labels(self, files: Sequence[str]) -> np.ndarray:
        """Scene indices (into SCENES), int64 [len(files)]."""
        return np.array([SCENE_INDEX[self._clip(f).scene_label] for f in files], dtype=np.int64)

    def devices(self, files: Sequence[str]) -> list[str]:
        return [self._clip(f).device for f in files]


def read_eval_files(eval_dir: str | Path) -> list[str]:
    """File names of the 2024 evaluation set (eval_dir/evaluation_setup/fold1_test.csv), as 'audio/x.wav'."""
    eval_dir = Path(eval_dir).expanduser()
    fix = (
        "point eval_dir at the unpacked DCASE 2024 Task 1 evaluation set (with evaluation_setup/ and audio/)"
    )
    if not eval_dir.is_dir():
        raise AscRayError("evaluation set directory not found", path=eval_dir, fix=fix)
    path = eval_dir / "evaluation_setup" / "fold1_test.csv"
    rows = _read_table(path, ("filename",), "evaluation list fold1_test.csv", fix)
    files = [_normalise(r["filename"]) for _, r in rows]
    if not files:
        raise AscRayError("fold1_test.csv lists no clips", path=path, fix=fix)
    if len(set(files)) != len(files):
        raise AscRayError("fold1_test.csv lists a file twice", path=path, fix=fix)
    return files


class EvalSet:
    """The unlabelled 2024 evaluation set: its file list and where its audio lies (what the cache needs)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.files = read_eval_files(self.root)

    def audio_path(self, filename: str) -> Path:
        return self.root / filename
