"""One pipeline per output dir: a lock file `<output-dir>/.asc-ray.lock` held for the whole run.

Two runs writing the same units, checkpoints and logits tables would corrupt each other's work, so the
second one stops in pre-flight, naming who holds the dir. The lock file holds the holder's host, pid, the
pid's start time (so a reused pid is not mistaken for the holder), the machine's boot id and the run's start
time; a daemon thread touches it every HEARTBEAT_S seconds while the run lives.

A lock is stale, and taken over with a log line, when:
- the holder ran on this host (same hostname) and its process is gone (pid dead, pid reused by another
  process, or the machine rebooted since: another boot id);
- the holder ran on another host and its heartbeat is older than STALE_S (the lock file's mtime: another
  host's pids cannot be checked from here). A run whose host lost the shared storage for that long is
  treated as dead.

Creation is atomic on local disks and NFS alike: the content is written to a unique temp file, then
hard-linked to the lock name (link() fails with EEXIST when the lock exists; unlike O_EXCL it is atomic on
NFSv2 too). No fcntl/flock: NFS lock daemons are often missing on clusters, and a flock says nothing about
who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from asc_ray.errors import AGAIN, AscRayError
from asc_ray.procs import boot_id, pid_alive, pid_start

LOCK_NAME = ".asc-ray.lock"
HEARTBEAT_S = 30.0
# the line a run says when it takes a dead run's lock over
STALE = "output dir lock of {holder} is stale ({reason}): taken over"
STALE_S = 600.0  # another host's lock is stale after 10 minutes without a heartbeat


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stale_reason(holder: dict | None, mtime: float, now: float | None = None) -> str | None:
    """Why the lock of `holder` (its file last touched at `mtime`) is stale, or None while it is held."""
    now = time.time() if now is None else now
    age = now - mtime
    if holder is None:  # unreadable: a writer died between creating and filling it (or garbage)
        return f"unreadable lock file, untouched for {age:.0f}s" if age > STALE_S else None
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", -1))
        if holder.get("boot_id") and boot_id() and holder["boot_id"] != boot_id():
            return "this machine rebooted since"
        if not pid_alive(pid):
            return f"process {pid} is gone"
        if holder.get("pid_start") and pid_start(pid) and holder["pid_start"] != pid_start(pid):
            return f"process {pid} is gone (the pid now belongs to another process)"
        return None
    if age > STALE_S:
        return f"no heartbeat from {holder.get('host')} for {age / 60:.0f} minutes"
    return None


def describe(holder: dict | None) -> str:
    if holder is None:
        return "an unknown process (the lock file is unreadable)"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" + (
        f" ({holder['command']})" if holder.get("command") else ""
    )


class OutputLock:
    """`with OutputLock(output_dir, log=print):` - held for the block; AscRayError when another run holds it."""

    def __init__(self, output_dir: str | Path, log=print, heartbeat_s: float = HEARTBEAT_S):
        self.dir = Path(output_dir)
        self.path = self.dir / LOCK_NAME
        self.log = log
        self.heartbeat_s = heartbeat_s
        self.me: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _link_new(self) -> bool:
        """Create the lock with our content; False when it exists."""
        tmp = self.dir / f"{LOCK_NAME}.{socket.gethostname()}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.me))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: O_EXCL (atomic on local disks and NFSv3+)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.me))
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": pid_start(os.getpid()),
            "boot_id": boot_id(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:300],
        }
        for _ in range(5):
            if self._link_new():
                break
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            holder = _read(self.path)
            if holder is None and time.time() - mtime < 2:
                time.sleep(0.5)  # being written right now (NFS caches may show it empty for a moment)
                holder = _read(self.path)
            reason = stale_reason(holder, mtime)
            if reason is None:
                raise AscRayError(
                    f"another asc-ray run is using this output dir: {describe(holder)}",
                    path=self.dir,
                    fix="wait for that run to finish (or stop it: its finished work is kept, and the same "
                    "command resumes it), or pass a different --output-dir for this run",
                )
            # take it over: move the stale lock aside, then create ours; a second run doing the same at once
            # either moves nothing (FileNotFoundError) or fails the link (EEXIST) and sees our fresh lock
            aside = self.dir / f"{LOCK_NAME}.stale.{socket.gethostname()}.{os.getpid()}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            moved = _read(aside)
            if moved != holder:  # we moved a lock created just now by another run: put it back, re-check
                with contextlib.suppress(OSError):
                    os.link(aside, self.path)
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            self.log(STALE.format(holder=describe(holder), reason=reason))
        else:
            raise AscRayError(
                "could not take the output dir lock (other runs keep taking it)",
                path=self.path,
                fix=f"make sure only one run uses this output dir, then {AGAIN}",
            )
        self._thread = threading.Thread(target=self._heartbeat, name="asc-ray-lock-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self.me is not None and _read(self.path) == self.me:  # never remove a lock another run took over
            self.path.unlink(missing_ok=True)
        self.me = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
