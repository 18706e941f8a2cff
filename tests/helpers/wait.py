"""Waiting on events (a file, a log line, a PID, an HTTP answer) instead of sleeping: poll a condition until
it holds, fail with what was awaited and the evidence, and stop early when the process it depends on died."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from asc_ray.layout import Layout, UnitFiles

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 120.0,
    what: str = "the condition",
    proc: subprocess.Popen | None = None,
    details: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> T:
    """Poll `condition()` until it returns something truthy and return that. `proc`: the process that makes the
    condition come true; its exit ends the wait at once. On failure the AssertionError names `what` and shows
    `details()` (a log tail)."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{details()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{details()}")
        time.sleep(interval)


def http_status(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; (0, reason) when nothing answers."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_for_http(
    url: str,
    timeout: float = 240.0,
    token: str | None = None,
    proc: subprocess.Popen | None = None,
    details: Callable[[], str] = lambda: "",
) -> None:
    """Until `url` answers 200 (a server is up)."""
    wait_for(
        lambda: http_status(url, token)[0] == 200,
        timeout,
        f"HTTP 200 from {url}",
        proc,
        details,
        interval=0.5,
    )


def unit_logs(out: Path, role: str, split: int | str = "*") -> list[Path]:
    """The unit.log files of a role ("teacher", "student") in a live run (asc_ray.layout.Layout.unit_dirs)."""
    return [f.log for f in map(UnitFiles, Layout(out).unit_dirs(role, split)) if f.log.is_file()]
