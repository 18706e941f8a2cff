"""A spool: calls that could not reach a server (MLflow, asc_ray.tracking), kept in a folder and sent later.

One JSONL file per process (host + pid in the name), one line per call, appended with a single write:
concurrent processes never interleave. A file is claimed for replay by renaming it (atomic), so two processes
(the driver, a worker, `python -m asc_ray.tracking replay`) never replay the same lines at once; lines replayed
are gone from the spool, lines that fail again go back into it. A process killed while it replays leaves its
claimed file behind: once that process is gone, a later replay takes it over and sends it again, so each call
must be one the server takes twice as once (an MLflow metric at a fixed time and step, a tag, a status).
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path

from asc_ray.procs import pid_alive

CLAIMED = ".replaying-"  # a claimed file: <its own name>.replaying-<host>-<pid of the replaying process>


class Spool:
    def __init__(self, folder: str | Path):
        self.dir = Path(folder)

    def own_file(self) -> Path:
        return self.dir / f"spool-{socket.gethostname()}-{os.getpid()}.jsonl"

    def append(self, recs: list[dict]) -> None:
        f = self.own_file()
        f.parent.mkdir(parents=True, exist_ok=True)
        with open(f, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in recs))  # one write: lines never interleave

    def files(self) -> list[Path]:
        """Every file still to send, claimed ones included."""
        return sorted(self.dir.glob("spool-*.jsonl*")) if self.dir.is_dir() else []

    def replay(
        self,
        send: Callable[[dict], None],
        refused: Callable[[Exception], bool],
        own_only: bool = False,
        orphans: bool = False,
    ) -> tuple[int, int]:
        """`send` each spooled record, oldest first; (sent, still spooled). A file stops at its first failure
        (the server is still down) and its remaining records are spooled again. A record the server refuses for
        good (`refused(error)`: e.g. its run was deleted) is dropped with a warning. Files claimed by a replay
        whose process on this host is gone are taken over; orphans: any claimed file (only safe while no
        other process uses the spool)."""
        if not self.dir.is_dir():
            return 0, 0
        files = [self.own_file()] if own_only else sorted(self.dir.glob("spool-*.jsonl"))
        if not own_only:
            files += [f for f in sorted(self.dir.glob(f"spool-*.jsonl{CLAIMED}*")) if orphans or _dead(f)]
        sent = left = 0
        for f in files:
            home = f.with_name(f.name.split(CLAIMED)[0])  # where records that fail again go back
            claimed = home.with_name(f"{home.name}{CLAIMED}{socket.gethostname()}-{os.getpid()}")
            try:
                os.rename(f, claimed)
            except FileNotFoundError:
                continue  # replayed by someone else meanwhile
            recs = []
            for line in claimed.read_text(encoding="utf-8").splitlines():
                try:
                    recs.append(json.loads(line))
                except ValueError:  # a line cut short by a killed process: nothing to send
                    continue
            for i, rec in enumerate(recs):
                try:
                    send(rec)
                except Exception as e:  # noqa: BLE001 - still down: keep the rest for later
                    if refused(e):
                        warnings.warn(f"the server refused a spooled {rec.get('op')}: {e}", stacklevel=2)
                        continue
                    with open(home, "a", encoding="utf-8") as fh:
                        fh.write("".join(json.dumps(r) + "\n" for r in recs[i:]))
                    left += len(recs) - i
                    break
                sent += 1
            claimed.unlink()
        return sent, left


def _dead(claimed: Path) -> bool:
    """Whether the process that claimed this file, on this host, is gone (another host's cannot be checked)."""
    host, _, pid = claimed.name.split(CLAIMED)[1].rpartition("-")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))
