"""`asc-ray data tau22` against a miniature of its three sources, served on 127.0.0.1 at the real URL paths:
Zenodo's record JSON and zip parts (one top folder inside), the split files at the GitHub release path, the
impulse responses at the pinned cpjku_dcase23 commit. A one-shot fault per path plays a bad network."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from data_helpers import assert_user_error
from helpers.wait import wait_for

from asc_ray.data import download
from asc_ray.data.download import check_dataset, download_tau22, fetch, git_blob_check, main
from asc_ray.data.synth import generate
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError

TOP = download.TAU22_TOP
RECORD_PATH = f"zenodo.org/api/records/{download.TAU22_RECORD}"
FILE_PATH = f"zenodo.org/records/{download.TAU22_RECORD}/files/"
SPLIT_PATH = "github.com/CPJKU/dcase2024_task1_baseline/releases/download/files/"
IR_PATH = f"raw.githubusercontent.com/CPJKU/cpjku_dcase23/{download.IRS_COMMIT}/datasets/dirs/"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip as TAU ships them: everything under one top folder, with folder entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in sorted({str(Path(name).parent) + "/" for name in members}):
            zf.writestr(folder, b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass(frozen=True)
class Miniature:
    files: dict[str, bytes]  # "<host>/<path>" -> bytes, as the real URLs name them
    irs: tuple[tuple[str, int, str], ...]  # download.MICIRP's shape
    audio: dict[str, bytes]  # "audio/x.wav" -> bytes
    parts: tuple[str, ...]  # the audio zips' keys


@pytest.fixture(scope="session")
def miniature(tmp_path_factory) -> Miniature:
    src = generate(tmp_path_factory.mktemp("mini") / "tau", clips_per_class=3, seed=3)
    audio = {f"audio/{p.name}": p.read_bytes() for p in sorted((src / "audio").glob("*.wav"))}
    names = sorted(audio)
    archives = {
        f"{TOP}.audio.{i + 1}.zip": _zip({f"{TOP}/{n}": audio[n] for n in names[i::2]}) for i in range(2)
    }
    archives[f"{TOP}.doc.zip"] = _zip({f"{TOP}/README.md": b"# TAU Urban Acoustic Scenes 2022 Mobile\n"})
    archives[f"{TOP}.meta.zip"] = _zip(
        {
            f"{TOP}/meta.csv": (src / "meta.csv").read_bytes(),
            f"{TOP}/evaluation_setup/fold1_train.csv": (src / "split100.csv").read_bytes(),
        }
    )
    record = {  # the fields of https://zenodo.org/api/records/6337421 that matter, in its layout
        "id": download.TAU22_RECORD,
        "metadata": {"title": "TAU Urban Acoustic Scenes 2022 Mobile, Development dataset"},
        "files": [
            {
                "id": f"0000000{i}-0000-0000-0000-000000000000",
                "key": key,
                "size": len(data),
                "checksum": f"md5:{_md5(data)}",
                "links": {
                    "self": f"https://zenodo.org/api/records/{download.TAU22_RECORD}/files/{key}/content"
                },
            }
            for i, (key, data) in enumerate(archives.items())
        ],
    }
    files = {RECORD_PATH: json.dumps(record).encode()}
    files.update({FILE_PATH + key: data for key, data in archives.items()})
    files.update({SPLIT_PATH + name: (src / name).read_bytes() for name in download.SPLIT_ROWS})
    irs = []  # the synthetic IRs under real MicIRP names, one of them with a character URLs must quote
    for (name, _, _), path in zip(download.MICIRP[4:9], sorted((src / "irs").glob("*.wav")), strict=True):
        data = path.read_bytes()
        files[IR_PATH + name] = data
        irs.append((name, len(data), hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()))
    assert any("&" in name for name, _, _ in irs)
    return Miniature(files, tuple(irs), audio, tuple(k for k in archives if ".audio." in k))


class Mirror(ThreadingHTTPServer):
    """Serves `files` under /mirror/<host>/<path>, with Range; records every request; `faults[path]` holds
    one-shot misbehaviours: "truncate" (close halfway), "corrupt" (one byte flipped), "ignore_range" (a 200
    with the whole file), or a Path: send half, wait until the client has written it to that .part file, then
    Ctrl-C the client."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mirror"

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


def _wait_for_size(path: Path, size: int, timeout_s: float = 30.0) -> None:
    wait_for(
        lambda: path.is_file() and path.stat().st_size >= size, timeout_s, f"{path} to reach {size} bytes"
    )


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv: Mirror = self.server
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).removeprefix("/mirror/")
        srv.requests.append((path, self.headers.get("Range")))
        data = srv.files.get(path)
        if data is None:
            self.send_error(404)
            return
        faults = srv.faults.get(path) or [None]
        fault = faults.pop(0)
        if fault == "corrupt":
            data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and fault != "ignore_range" else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "truncate" or isinstance(fault, Path):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if isinstance(
                fault, Path
            ):  # Ctrl-C the client (pytest's main thread) once it has stored that half
                _wait_for_size(fault, len(body) // 2)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return  # HTTP/1.0: the connection closes, short of Content-Length
        self.wfile.write(body)


@pytest.fixture
def mirror(miniature, monkeypatch):
    monkeypatch.setattr(download, "MICIRP", miniature.irs)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = Mirror(miniature.files)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _get(dest: Path, srv: Mirror) -> dict[str, int]:
    return download_tau22(dest, srv.url, backoff_s=0, progress=False)


def _assert_complete(dest: Path, mini: Miniature) -> None:
    ds = TauDataset.open(dest)
    assert sorted(ds.clips) == sorted(mini.audio)
    assert all((dest / f).read_bytes() == data for f, data in mini.audio.items())
    assert sorted(p.name for p in (dest / "irs").iterdir()) == sorted(n for n, _, _ in mini.irs)
    assert not [p for p in dest.rglob("*") if p.name.endswith(".part")]


def test_clean_download_gives_the_layout_preflight_reads(mirror, miniature, tmp_path, capsys):
    dest = tmp_path / "tau22"
    assert main(["tau22", str(dest), "--from", mirror.url]) == 0
    _assert_complete(dest, miniature)
    ds = TauDataset.open(dest)
    assert ds.split_dir == dest / "split_setup"
    for n in (5, 10, 25, 50, 100):
        assert ds.split_files(n)
    assert (dest / "evaluation_setup" / "fold1_train.csv").is_file() and (dest / "README.md").is_file()
    assert not list((dest / ".download").glob("*.zip")), "unpacked zips are deleted"
    out = capsys.readouterr().out
    assert f"{len(miniature.audio)} clips" in out and f"{len(miniature.irs)} impulse responses" in out


def test_rerun_downloads_nothing(mirror, miniature, tmp_path):
    dest = tmp_path / "tau22"
    first = download_tau22(dest, mirror.url, keep_archives=True, progress=False)
    assert sorted(p.name for p in (dest / ".download").glob("*.zip")) == sorted(
        k.removeprefix(FILE_PATH) for k in miniature.files if k.startswith(FILE_PATH)
    )
    mirror.requests.clear()
    assert _get(dest, mirror) == first
    assert mirror.requests == []


def test_truncated_part_is_resumed_with_a_range_request(mirror, miniature, tmp_path):
    path = FILE_PATH + miniature.parts[0]
    mirror.faults[path] = ["truncate"]
    _get(tmp_path / "tau22", mirror)
    assert mirror.ranges(path) == [None, f"bytes={len(miniature.files[path]) // 2}-"]
    _assert_complete(tmp_path / "tau22", miniature)


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt even where the suite runs in the background: `cmd &` in a script starts
    Python with SIGINT ignored, and Python then installs no handler of its own."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupted_download_resumes_from_its_part_file(mirror, miniature, tmp_path, ctrl_c_raises):
    dest, key = tmp_path / "tau22", miniature.parts[1]
    part = dest / ".download" / f"{key}.part"
    mirror.faults[FILE_PATH + key] = [part]
    with pytest.raises(KeyboardInterrupt):
        _get(dest, mirror)
    kept = part.stat().st_size
    assert kept == len(miniature.files[FILE_PATH + key]) // 2
    with pytest.raises(AscRayError, match="meta.csv not found"):  # half a set never looks complete
        TauDataset.open(dest)

    _get(dest, mirror)
    assert mirror.ranges(FILE_PATH + key)[-1] == f"bytes={kept}-"
    _assert_complete(dest, miniature)


def test_wrong_checksum_is_one_error_naming_the_file(mirror, miniature, tmp_path):
    dest, key = tmp_path / "tau22", miniature.parts[0]
    good = miniature.files[FILE_PATH + key]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    mirror.faults[FILE_PATH + key] = ["corrupt"]
    with pytest.raises(AscRayError) as e:
        _get(dest, mirror)
    assert_user_error(e, key, _md5(good), _md5(bytes(bad)), "run the same command again", "--from")
    assert not list((dest / ".download").glob(f"{key}*")), "the bad download is deleted"

    _get(dest, mirror)  # as the fix says
    _assert_complete(dest, miniature)


def test_server_that_ignores_range_restarts_the_file(mirror, miniature, tmp_path):
    name, size, blob = miniature.irs[0]
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(b"not a prefix")
    mirror.faults[IR_PATH + name] = ["ignore_range"]
    url = download.mirrored(download.IRS_URL.format(name=urllib.parse.quote(name)), mirror.url)
    fetch(url, dest, size=size, check=git_blob_check(blob), progress=False)
    assert mirror.ranges(IR_PATH + name) == ["bytes=12-"]
    assert dest.read_bytes() == miniature.files[IR_PATH + name]


def test_missing_file_on_the_mirror_names_its_url(mirror, tmp_path):
    del mirror.files[SPLIT_PATH + "split25.csv"]
    with pytest.raises(AscRayError) as e:
        _get(tmp_path / "tau22", mirror)
    assert_user_error(e, "HTTP 404", f"{SPLIT_PATH}split25.csv")


def test_folder_mirror(miniature, monkeypatch, tmp_path):
    """--from file://FOLDER: the files under <host>/<path>, as a plain copy of the sources."""
    monkeypatch.setattr(download, "MICIRP", miniature.irs)
    for path, data in miniature.files.items():
        (tmp_path / "mirror" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / path).write_bytes(data)
    assert main(["tau22", str(tmp_path / "tau22"), "--from", (tmp_path / "mirror").as_uri()]) == 0
    _assert_complete(tmp_path / "tau22", miniature)


def test_record_layouts(miniature, tmp_path):
    """Zenodo's records API today; InvenioRDM's {"entries": ...} and the older API's filename/filesize too."""
    files = json.loads(miniature.files[RECORD_PATH])["files"]
    expected = download.parse_record(_write(tmp_path / "a.json", {"files": files}), "url")
    assert [a["key"] for a in expected][-2:] == [f"{TOP}.doc.zip", f"{TOP}.meta.zip"]  # meta.csv last
    entries = {f["key"]: f for f in files}
    older = [{"filename": f["key"], "filesize": f["size"], "checksum": f["checksum"][4:]} for f in files]
    for doc in ({"files": {"entries": entries}}, {"files": older}):
        assert download.parse_record(_write(tmp_path / "b.json", doc), "url") == expected
    with pytest.raises(AscRayError) as e:
        download.parse_record(_write(tmp_path / "c.json", {"hits": []}), "http://x/record")
    assert_user_error(e, "http://x/record", "'files'")


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_final_check_knows_the_official_counts(tiny_dataset):
    with pytest.raises(AscRayError) as e:
        check_dataset(tiny_dataset, official=True)
    assert_user_error(
        e, "clips: 30, officially 230,350", "split5.csv", "officially 6,980", "irs: 5, officially 66"
    )
    assert check_dataset(tiny_dataset, official=False)["clips"] == 30


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tau22", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "asc-ray data tau22" in out and "(default: 5)" in out and "--from URL" in out
