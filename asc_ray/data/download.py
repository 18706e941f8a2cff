"""Download the TAU22 development set, the DCASE 2024 split files and the MicIRP impulse responses.

    asc-ray data tau22 DIR [--from URL] [--keep-archives] [--retries N]
    python -m asc_ray.data.download tau22 DIR ...

writes the layout the pipeline's pre-flight reads:
    DIR/meta.csv, DIR/audio/*.wav   TAU Urban Acoustic Scenes 2022 Mobile, development (Zenodo 6337421)
    DIR/split_setup/split{5,10,25,50,100}.csv, test.csv   DCASE 2024 splits (release files of the baseline)
    DIR/irs/*.wav                   the 66 MicIRP device impulse responses
    DIR/.download/                  the record, downloads in flight (NAME.part), a marker per unpacked zip

The sources, and what is verified about each:
- TAU22: Zenodo's records API (zenodo.org/api/records/6337421) lists every file with its size and md5:
  16 audio zips (~1.6 GB each), a meta zip and a doc zip. A short file is resumed, a wrong md5 is an error.
  Each zip holds one top folder, TAU-urban-acoustic-scenes-2022-mobile-development/, flattened into DIR.
- Split files: GitHub release assets. No checksum is published for them (the baseline's own code fetches
  them unchecked with torch.hub.download_url_to_file), so their content is checked instead: tab-separated
  with a `filename` column (and `scene_label` in split*.csv), and from the real source the official row
  counts.
- Impulse responses: MicIRP (micirp.blogspot.com) has no archive to download, only a page per microphone;
  CP-JKU committed the 66 WAVs it used to github.com/CPJKU/cpjku_dcase23 (datasets/dirs/). They are fetched
  from that commit and checked against their git blob SHA-1s (git's checksum of a file), listed in MICIRP.

Every download goes to NAME.part and is renamed to NAME only once complete and verified. A .part left by an
interruption is resumed with an HTTP Range request (a server that ignores Range sends the whole file, which
is then rewritten from the start); a connection that closes early is retried in-process, with backoff. The
audio zips are unpacked one by one (each file under a temporary name, then renamed) and then deleted
(--keep-archives keeps them); meta.csv comes last, so an interrupted run never leaves a set that looks
complete. A re-run skips every finished step and asks the network nothing; it only repeats the final check:
the dataset opened as the pre-flight opens it, every split file and test.csv read, every audio file of
meta.csv present, the impulse responses loaded.

`--from URL`: a mirror that serves each source URL's host and path below URL (http(s):// or file://), e.g.
URL/zenodo.org/api/records/6337421, URL/zenodo.org/records/6337421/files/<zip>,
URL/github.com/CPJKU/dcase2024_task1_baseline/releases/download/files/split5.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from asc_ray.console import run_cli
from asc_ray.data.fetch import (
    BACKOFF_S,
    MIRROR_FIX,
    RETRIES,
    extract,
    fetch,
    git_blob_check,
    md5_check,
    mirrored,
    say,
)
from asc_ray.data.micirp import MICIRP  # (file name, size, git blob SHA-1) of each WAV at IRS_COMMIT
from asc_ray.data.tau import SPLIT_SUBDIR, SPLITS, TauDataset
from asc_ray.errors import AscRayError
from asc_ray.io import atomic_write_text

# --- the sources -------------------------------------------------------------------------------------------

TAU22_RECORD = 6337421
TAU22_RECORD_URL = f"https://zenodo.org/api/records/{TAU22_RECORD}"  # JSON: files[] with key, size, "md5:..."
TAU22_FILE_URL = f"https://zenodo.org/records/{TAU22_RECORD}/files/{{key}}?download=1"
TAU22_TOP = "TAU-urban-acoustic-scenes-2022-mobile-development"  # the one folder inside every zip
TAU22_CLIPS = 230_350
TAU22_SAMPLE_RATE = 44_100
# TAU-urban-acoustic-scenes-2022-mobile-development.audio.1.zip ... .audio.16.zip, .meta.zip, .doc.zip
ARCHIVE_RE = re.compile(re.escape(TAU22_TOP) + r"\.(?:audio\.(\d+)|meta|doc)\.zip")

SPLITS_URL = "https://github.com/CPJKU/dcase2024_task1_baseline/releases/download/files/{name}"
SPLIT_ROWS = {  # the official row counts (no checksum is published for these files)
    "split5.csv": 6_980,
    "split10.csv": 13_960,
    "split25.csv": 34_900,
    "split50.csv": 69_800,
    "split100.csv": 139_620,
    "test.csv": 29_680,
}

IRS_COMMIT = "48d405f8f185e47a5aeb5d8dea45c051f33320aa"  # CPJKU/cpjku_dcase23: "update with dataset and ..."
IRS_URL = f"https://raw.githubusercontent.com/CPJKU/cpjku_dcase23/{IRS_COMMIT}/datasets/dirs/{{name}}"
IRS_SUBDIR = "irs"

WORK_SUBDIR = ".download"
UNKNOWN_DATASET = "unknown dataset '{name}'"
# A WAV in the TAU zips shrinks little (deflated 24-bit PCM noise): room for the unpacked files, estimated
UNZIPPED_PER_ZIPPED = 1.15


def split_check(official: bool) -> Callable[[Path, Path], None]:
    """A fetch() check for a split file: a tab-separated table with the DCASE columns, and (`official`) the
    row count of the official release."""

    def check(part: Path, dest: Path) -> None:
        need = ("filename",) if dest.name == "test.csv" else ("filename", "scene_label")
        fix = f"run the same command again to download it afresh; {MIRROR_FIX}"
        try:
            with open(part, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f, delimiter="\t"))
        except UnicodeDecodeError:
            raise AscRayError(f"{dest.name} is not a text file", path=dest, fix=fix) from None
        header = [h.strip() for h in rows[0]] if rows else []
        if not all(c in header for c in need):
            raise AscRayError(
                f"{dest.name} is not a DCASE split file: its header is {header}, expected {list(need)} "
                "(tab-separated)",
                path=dest,
                fix=fix,
            )
        n = sum(1 for r in rows[1:] if any(v.strip() for v in r))
        if official and n != SPLIT_ROWS[dest.name]:
            raise AscRayError(
                f"{dest.name} has {n:,} rows, the official DCASE 2024 file has {SPLIT_ROWS[dest.name]:,}",
                path=dest,
                fix=fix,
            )

    return check


def parse_record(path: Path, url: str) -> list[dict]:
    """The TAU22 archives a Zenodo record lists, as [{key, size, md5, part}]: the audio zips in order, then
    the doc and the meta zip (meta.csv is unpacked last)."""
    fix = (
        f"with --from, the mirror must serve {TAU22_RECORD_URL} as Zenodo's records API does (a JSON object "
        "whose 'files' list each file's key, size and checksum 'md5:...'); run again to fetch it afresh"
    )
    archives = []
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if isinstance(files, dict):  # InvenioRDM's own serialisation: {"entries": {key: file}}
            files = list(files["entries"].values())
        for f in files:
            key = f.get("key") or f["filename"]  # "filename", "filesize": Zenodo's older API
            m = ARCHIVE_RE.fullmatch(key)
            algo, _, digest = f["checksum"].rpartition(":")
            if m and algo in ("md5", "") and re.fullmatch(r"[0-9a-f]{32}", digest):
                part = int(m.group(1)) if m.group(1) else None
                size = int(f["size"] if "size" in f else f["filesize"])
                archives.append({"key": key, "size": size, "md5": digest, "part": part})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AscRayError(f"the TAU22 record is not Zenodo's file list ({e!r})", path=url, fix=fix) from None
    if f"{TAU22_TOP}.meta.zip" not in {a["key"] for a in archives} or not any(a["part"] for a in archives):
        raise AscRayError(
            f"the TAU22 record lists no {TAU22_TOP}.meta.zip or no audio zip", path=url, fix=fix
        )
    last = {"doc": 1 << 30, "meta": 1 << 31}
    return sorted(archives, key=lambda a: a["part"] or last[a["key"].rsplit(".", 2)[1]])


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _marker(work: Path, archive: dict) -> Path:
    return work / f"{archive['key']}.unpacked"


def _unpacked(work: Path, archive: dict) -> bool:
    marker = _marker(work, archive)
    return marker.is_file() and marker.read_text().strip() == archive["md5"]


def _check_space(dest: Path, work: Path, todo: list[dict], keep_archives: bool) -> None:
    """Stop before a download that cannot fit: the files still to unpack, and the zips still to fetch (without
    --keep-archives only one lies on the disk at a time)."""
    if not todo:
        return

    def have(a: dict) -> int:
        for p in (work / a["key"], work / f"{a['key']}.part"):
            if p.is_file():
                return p.stat().st_size
        return 0

    left = [a["size"] - have(a) for a in todo]
    need = UNZIPPED_PER_ZIPPED * sum(a["size"] for a in todo) + (sum(left) if keep_archives else max(left))
    free = shutil.disk_usage(work).free
    if free < need:
        raise AscRayError(
            f"not enough free space: the rest of the TAU22 download needs about {_gb(need)}, "
            f"{_gb(free)} is free",
            path=dest,
            fix="free space on that disk, or choose a DIR on a larger one, then run the same command again "
            "(finished steps are kept)",
        )


def check_dataset(root: str | Path, official: bool = True) -> dict[str, int]:
    """The final check, on what the pre-flight reads: meta.csv, every split file and test.csv (each file known
    to meta.csv), every audio file of meta.csv present, the impulse responses loadable. `official`: the counts
    must be those of the real release. Returns the counts (clips, rows per split file, irs)."""
    root = Path(root).expanduser()
    ds = TauDataset.open(root)
    counts = {"clips": len(ds.clips)}
    counts.update({f"split{n}.csv": len(ds.split_files(n)) for n in SPLITS})
    counts["test.csv"] = len(ds.test_files())
    missing = [f for f in ds.clips if not ds.audio_path(f).is_file()]
    if missing:
        raise AscRayError(
            f"{len(missing):,} of the {len(ds.clips):,} audio files meta.csv lists are missing, "
            f"e.g. {missing[0]}",
            path=root / "audio",
            fix=f"delete {root / WORK_SUBDIR}/*.unpacked and run the download again: the audio zips are "
            "fetched (or, kept with --keep-archives, reused) and unpacked again",
        )
    from asc_ray.data.irs import load_irs  # torch: seconds to import, for this last check only

    counts["irs"] = len(load_irs(root / IRS_SUBDIR, TAU22_SAMPLE_RATE))
    if official:
        expected = {"clips": TAU22_CLIPS, **SPLIT_ROWS, "irs": len(MICIRP)}
        wrong = [f"{k}: {counts[k]:,}, officially {v:,}" for k, v in expected.items() if counts[k] != v]
        if wrong:
            raise AscRayError(
                "the set differs from the official release (" + "; ".join(wrong) + ")",
                path=root,
                fix="remove what did not come from the release (split files in the data directory itself are "
                f"read before {SPLIT_SUBDIR}/, and every .wav in {IRS_SUBDIR}/ is loaded), then run again",
            )
    return counts


def download_tau22(
    dest: str | Path,
    mirror: str | None = None,
    *,
    keep_archives: bool = False,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    progress: bool = True,
) -> dict[str, int]:
    """Download and unpack the TAU22 development set, the DCASE 2024 split files and the MicIRP impulse
    responses into `dest` (see the module's docstring), then check_dataset(); returns its counts. `mirror`:
    the base URL of a mirror (--from). Each finished step is skipped when called again."""
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise AscRayError(
            "the destination is not a directory", path=dest, fix="choose a directory for the set"
        )
    work = dest / WORK_SUBDIR
    work.mkdir(parents=True, exist_ok=True)
    get = {"retries": retries, "backoff_s": backoff_s}

    record_url = mirrored(TAU22_RECORD_URL, mirror)
    record = fetch(
        record_url,
        work / f"record-{TAU22_RECORD}.json",
        progress=False,
        check=lambda p, _: parse_record(p, record_url),
        **get,
    )
    archives = parse_record(record, record_url)
    todo = [a for a in archives if not _unpacked(work, a)]
    _check_space(dest, work, todo, keep_archives)
    if todo:
        size = _gb(sum(a["size"] for a in todo))
        say(f"TAU22: {len(todo)} of {len(archives)} archives to fetch and unpack ({size} of zips)")

    def fetch_archive(a: dict) -> Path:
        url = mirrored(TAU22_FILE_URL.format(key=urllib.parse.quote(a["key"])), mirror)
        return fetch(
            url, work / a["key"], size=a["size"], check=md5_check(a["md5"]), progress=progress, **get
        )

    def unpack(a: dict) -> None:
        if _unpacked(work, a):
            return
        path = fetch_archive(a)
        n = extract(path, dest, progress)
        atomic_write_text(_marker(work, a), a["md5"])
        if not keep_archives:
            path.unlink()
        say(f"  {a['key']}: {n:,} files unpacked")

    *rest, meta = archives
    if not _unpacked(work, meta):  # fetched first (small: a bad source shows at once), unpacked last:
        fetch_archive(meta)  # meta.csv is what makes a set look whole
    for a in rest:
        unpack(a)

    official = mirror is None
    for name in SPLIT_ROWS:
        url = mirrored(SPLITS_URL.format(name=name), mirror)
        fetch(url, dest / SPLIT_SUBDIR / name, check=split_check(official), progress=False, **get)
    say(f"split files: {len(SPLIT_ROWS)} in {dest / SPLIT_SUBDIR}")

    for name, size, blob in tqdm(
        MICIRP,
        desc="impulse responses",
        unit="file",
        file=sys.stderr,
        disable=not progress or None,
        leave=False,
    ):
        url = mirrored(IRS_URL.format(name=urllib.parse.quote(name)), mirror)
        fetch(url, dest / IRS_SUBDIR / name, size=size, check=git_blob_check(blob), progress=False, **get)
    say(f"impulse responses: {len(MICIRP)} in {dest / IRS_SUBDIR}")

    unpack(meta)
    return check_dataset(dest, official=official)


def main(argv: list[str] | None = None, prog: str = "asc-ray data") -> int:
    """`asc-ray data DATASET DIR ...`: DATASETS says which there are."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(prog), end="")
        return 0
    if not argv or argv[0] not in DATASETS:
        raise AscRayError(
            UNKNOWN_DATASET.format(name=argv[0]) if argv else "no dataset named",
            fix=f"name one: {', '.join(f'{prog} {n} DIR' for n in DATASETS)} (`{prog} --help` says what each is)",
        )
    return DATASETS[argv[0]][1](argv[1:], f"{prog} {argv[0]}")


def usage(prog: str) -> str:
    width = max(map(len, DATASETS))
    lines = [f"  {name:<{width}}  {what}" for name, (what, _) in DATASETS.items()]
    return (
        f"usage: {prog} DATASET DIR [options]   ({prog} DATASET --help: its options)\n\n"
        "Download a dataset into DIR, in the layout the pipeline reads, and check it.\n\n"
        "datasets:\n" + "\n".join(lines) + "\n"
    )


def tau22_main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Download the TAU Urban Acoustic Scenes 2022 Mobile development set (Zenodo record "
        f"{TAU22_RECORD}, ~26 GB of zips), the DCASE 2024 split files and the 66 MicIRP device impulse "
        "responses into DIR, in the layout the pipeline reads; then check it as the pre-flight does.",
        epilog="Interrupted? Run the same command again: finished files are kept, a partial one resumes. "
        "Downloads are checked against the md5s of the Zenodo record and the git checksums of the impulse "
        "responses; the split files, for which no checksum is published, against their official row counts. "
        "The zips total about 26 GB and the unpacked set about as much again (the space is checked before "
        "anything is downloaded, from the sizes the record lists). Sources: zenodo.org/api/records/"
        f"{TAU22_RECORD} (and the files it lists), {SPLITS_URL.format(name='')} and "
        f"{IRS_URL.format(name='')}.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="where the set goes (new, or one a run filled)")
    p.add_argument(
        "--from",
        dest="mirror",
        metavar="URL",
        help="a mirror (http(s):// or file://) that serves each source URL's host and path below URL, e.g. "
        "URL/zenodo.org/api/records/6337421 (default: the sources themselves)",
    )
    p.add_argument(
        "--keep-archives",
        action="store_true",
        help=f"keep the zips in DIR/{WORK_SUBDIR} once unpacked (default: each is deleted once unpacked)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=RETRIES,
        metavar="N",
        help="further tries of a download that fails on the network, each resuming (default: %(default)s)",
    )
    a = p.parse_args(argv)
    if a.mirror is not None and urllib.parse.urlsplit(a.mirror).scheme not in ("http", "https", "file"):
        raise AscRayError(
            "--from takes a URL (http://, https:// or file://)",
            path=a.mirror,
            fix="give the mirror's base URL, e.g. --from https://mirror.example.org/asc "
            "(or file:///data/mirror)",
        )
    counts = download_tau22(a.dir, a.mirror, keep_archives=a.keep_archives, retries=max(0, a.retries))
    rows = ", ".join(f"{k[:-4]} {v:,}" for k, v in counts.items() if k.endswith(".csv"))
    print(
        f"TAU22 development set ready in {a.dir}: {counts['clips']:,} clips, split rows {rows}, "
        f"{counts['irs']} impulse responses"
    )
    return 0


DATASETS: dict[str, tuple[str, Callable[[list[str], str], int]]] = {  # name -> (what it is, its main)
    "tau22": (
        "TAU Urban Acoustic Scenes 2022 Mobile, development (~26 GB of zips), the DCASE 2024 split files "
        "and the MicIRP device impulse responses",
        tau22_main,
    ),
}


if __name__ == "__main__":
    run_cli(lambda: main(prog="python -m asc_ray.data.download"))
