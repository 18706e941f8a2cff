"""Downloading a file the way a big dataset needs it: resumed from a .part file with an HTTP Range request after an
interruption, retried with backoff when the connection drops, verified (md5, git blob SHA-1 or a content
check) before it is renamed into place; and zip archives unpacked file by file, never leaving a half-written
file that looks complete. asc_ray.data.download uses it for TAU22, its split files and the impulse responses."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from asc_ray.errors import AscRayError
from asc_ray.io import explain_write_error

RETRIES = 5  # further tries of a download that failed on the network; it resumes each time
BACKOFF_S = 2.0  # wait before try k: BACKOFF_S * 2 ** (k - 1)
TIMEOUT_S = 60  # a connection that sends nothing for this long counts as failed
CHUNK = 1 << 20
RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "asc-ray (dataset download)"

GET_FIX = "run the same command again: finished files are kept and a partial one resumes"
MIRROR_FIX = "or use --from URL with a mirror that serves the same files"
# a host name that does not resolve: no network here (or no DNS); retrying would only wait
UNRESOLVED = "cannot resolve the host {host}: this machine has no network or no name service"
OFFLINE_FIX = (
    "on a machine with a network, download the same files into a folder laid out as <host>/<path> (e.g. "
    "FOLDER/zenodo.org/api/records/6337421; --help lists the sources), copy it here and run the same command "
    "with --from file:///path/to/FOLDER; or run the command there and copy DIR here"
)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mirrored(url: str, mirror: str | None) -> str:
    """`url`, or where a mirror serves it: MIRROR/<host>/<path>, no query (so a folder of files works)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


# --- one file ----------------------------------------------------------------------------------------------


class _Retry(Exception):
    """A network failure worth another try; what arrived stays in the .part file."""


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m.group(1)) if m else None


def _get(url: str, part: Path, size: int | None, progress: bool) -> None:
    """One attempt: resume `part` from its length (or start it), until the server's end of the file."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # not a prefix of this file
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is not a prefix the server can continue: start over
            part.unlink()
            raise _Retry(f"the server cannot resume at byte {have:,} (HTTP 416)") from None
        if e.code in RETRY_HTTP:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise AscRayError(
            f"the server answered HTTP {e.code} {e.reason}",
            path=url,
            fix="check the address (with --from: does the mirror serve this path? see --help)"
            + ("" if e.code in (404, 410) else f"; {GET_FIX}"),
        ) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timeout
        if isinstance(getattr(e, "reason", None), socket.gaierror):  # at once: no network to wait for
            host = urllib.parse.urlsplit(url).hostname
            raise AscRayError(UNRESOLVED.format(host=host), path=url, fix=OFFLINE_FIX) from None
        raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        status = getattr(resp, "status", None) or 200
        if have and (status != 206 or _content_range_start(resp.headers.get("Content-Range")) != have):
            have = 0  # the server ignored Range (or answered another one): the whole file follows
        length = resp.headers.get("Content-Length")
        total = size if size is not None else (have + int(length) if length and length.isdigit() else None)
        read = getattr(resp, "read1", resp.read)  # what has arrived: a stalled connection loses nothing
        with (
            # unbuffered: what arrived is in the .part at once, so an interrupted run resumes from all of it
            open(part, "ab" if have else "wb", buffering=0) as f,
            tqdm(
                total=total,
                initial=have,
                desc=part.name[: -len(".part")],
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not progress or None,  # None: only on a terminal
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    chunk = read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # IncompleteRead: closed early
                    raise _Retry(f"{type(e).__name__} after {f.tell():,} bytes") from None
                if not chunk:
                    break
                try:
                    view = memoryview(chunk)
                    while view:  # a raw write may take part of it
                        view = view[f.write(view) :]
                except OSError as e:
                    raise explain_write_error(e, part, total) from None
                bar.update(len(chunk))
            got = f.tell()
    if total is not None and got < total:
        raise _Retry(f"the connection closed after {got:,} of {total:,} bytes")


def fetch(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    check: Callable[[Path, Path], None] | None = None,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` through dest.part, resuming a .part left by an earlier call. `size`: the
    length the source publishes (a shorter download is resumed, a longer one is an error); `check(part,
    dest)`: raises AscRayError when the bytes are not the published file (the .part is then deleted).
    `dest` is only ever created complete and checked, so an existing `dest` is taken as it is."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _get(url, part, size, progress)
            break
        except _Retry as e:
            reason = str(e)
            if attempt < retries:
                say(f"  {dest.name}: {reason}; trying again ({attempt + 1}/{retries})")
    else:
        kept = part.stat().st_size if part.exists() else 0
        raise AscRayError(
            f"download of {dest.name} failed after {retries + 1} tries ({reason})"
            + (f"; the {kept:,} bytes that arrived are kept in {part}" if kept else ""),
            path=url,
            fix=f"{GET_FIX}; {MIRROR_FIX}",
        )
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise AscRayError(
            f"{dest.name} has {got:,} bytes, the source lists {size:,}; the download was deleted",
            path=url,
            fix=f"{GET_FIX}; if it happens again the server sends another file: {MIRROR_FIX}",
        )
    if check is not None:
        try:
            check(part, dest)
        except AscRayError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    return dest


def _file_hash(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    h = hashlib.new(algorithm, prefix)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def md5_check(expected: str) -> Callable[[Path, Path], None]:
    """A fetch() check: the file's md5 is `expected` (Zenodo publishes md5s)."""

    def check(part: Path, dest: Path) -> None:
        actual = _file_hash(part, "md5")
        if actual != expected:
            raise AscRayError(
                f"{dest.name}: wrong checksum: md5 {actual}, the record publishes {expected}; "
                "the bad download was deleted",
                path=dest,
                fix=f"run the same command again to download it afresh; if it happens again the server "
                f"sends a corrupt copy: {MIRROR_FIX}",
            )

    return check


def git_blob_check(expected: str) -> Callable[[Path, Path], None]:
    """A fetch() check: the file's git blob SHA-1 is `expected` (as `git ls-tree` lists a committed file)."""

    def check(part: Path, dest: Path) -> None:
        actual = _file_hash(part, "sha1", b"blob %d\0" % part.stat().st_size)
        if actual != expected:
            raise AscRayError(
                f"{dest.name}: wrong checksum: git blob SHA-1 {actual}, the repository lists {expected}; "
                "the bad download was deleted",
                path=dest,
                fix=f"run the same command again to download it afresh; if it happens again: {MIRROR_FIX}",
            )

    return check


# --- archives ----------------------------------------------------------------------------------------------


def _member_paths(names: list[str], archive: Path) -> list[PurePosixPath]:
    """Each member's path below the archive's one top folder (if all share one); none may leave DIR."""
    paths = [PurePosixPath(n) for n in names]
    for p in paths:
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise AscRayError(
                f"{archive.name} holds a file outside its folder ({p})",
                path=archive,
                fix="delete the archive and run again; if it happens again the source is not TAU22",
            )
    tops = {p.parts[0] for p in paths}
    if len(tops) == 1 and all(len(p.parts) > 1 for p in paths):
        return [PurePosixPath(*p.parts[1:]) for p in paths]
    return paths


def extract(archive: Path, dest: Path, progress: bool = True) -> int:
    """Unpack a zip into `dest`, its one top-level folder flattened; each file is written under a temporary
    name and renamed, so a file in `dest` is complete or absent. Returns the number of files."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            rels = _member_paths([m.filename for m in members], archive)
            pairs = list(zip(members, rels, strict=True))
            for member, rel in tqdm(
                pairs,
                desc=f"unzip {archive.name}",
                unit="file",
                file=sys.stderr,
                disable=not progress or None,
                leave=False,
            ):
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.part")
                try:
                    with zf.open(member) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    os.replace(tmp, target)
                except OSError as e:
                    raise explain_write_error(e, target, member.file_size) from None
                finally:
                    tmp.unlink(missing_ok=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as e:  # a bad CRC: BadZipFile
        raise AscRayError(
            f"{archive.name} is not a readable zip archive ({e})",
            path=archive,
            fix=f"delete {archive} and run the same command again to download it afresh",
        ) from None
    return len(members)


# --- the whole set -----------------------------------------------------------------------------------------
