"""Helpers of the serving tests: run asc-ray-predict, run a server (an MLflow model, the MLflow UI) until its
URL answers, and look at the MLflow UI in a real headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from helpers.procs import PY, cli_env
from helpers.wait import wait_for_http


def env_with_venv_bin(tmp: Path, tracking_uri: str | None = None) -> dict:
    """The environment a user has after activating the venv: its bin/ first on PATH (mlflow starts
    `uvicorn` / `gunicorn` by name). A venv that shares another's packages may lack their scripts:
    then a shim runs the module with this interpreter."""
    env = cli_env(tracking_uri)
    env.pop("PYTHONPATH")  # the installed package, as a user has it
    shims = tmp / "bin"
    shims.mkdir(exist_ok=True)
    venv_bin = Path(PY).parent
    for tool in ("uvicorn", "gunicorn"):
        if not (venv_bin / tool).exists():
            (shims / tool).write_text(f'#!/bin/sh\nexec "{PY}" -m {tool} "$@"\n')
            (shims / tool).chmod(0o755)
    env["PATH"] = f"{venv_bin}:{shims}:{env.get('PATH', '')}"
    return env


def predict_cli(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "asc_ray.predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else cli_env(),
        cwd=cwd,
    )


def read_probs(csv_path: Path) -> dict[str, np.ndarray]:
    from asc_ray.export import read_dcase_output

    files, _, probs = read_dcase_output(csv_path)
    return dict(zip(files, probs, strict=True))


@contextlib.contextmanager
def running(cmd: list[str], env: dict, url: str, log: Path, timeout: float = 240):
    """Start a server process, wait until `url` answers, yield it, stop it (and only it) afterwards."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(url, timeout, proc=proc, details=lambda: log.read_text()[-3000:])
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # its own session: the server and its workers, nothing else
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)


# ---------------------------------------------------------------------------------------- the browser
def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def browse(url: str, screenshot: Path, expect: list[str], attempts: int = 4) -> str:
    """The page's DOM after the app settled (headless Chromium, virtual time), and its screenshot. Retries
    with a longer budget until every string of `expect` is in the DOM (a loaded machine renders slowly)."""
    exe = chromium()
    assert exe, "no Chromium: apt-get install chromium"
    dom = ""
    for i in range(attempts):
        with tempfile.TemporaryDirectory() as profile:
            common = [
                exe,
                "--headless",
                "--no-sandbox",  # root in a container
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1600,1000",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={20000 * (i + 1)}",
            ]
            r = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=240)
            dom = r.stdout
            if all(e in dom for e in expect):
                subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=240)
                return dom
    raise AssertionError(f"page never showed {expect}; last DOM tail: {dom[-2000:]}")


class _Grid(HTMLParser):
    """ag-grid rows of the runs table: row-index -> {col-id: text}; the pinned run-name column and the
    scrolling columns are separate row elements with the same row-index."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._stack: list[tuple[str, str | None, str | None]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        row = a.get("row-index") if a.get("role") == "row" else None
        col = a.get("col-id") if a.get("role") == "gridcell" else None
        parent_row = next((r for _, r, _ in reversed(self._stack) if r is not None), None)
        self._stack.append((tag, row or (parent_row if col else None), col))
        if tag in ("br", "img", "input", "meta", "link", "hr"):
            self._stack.pop()

    def handle_endtag(self, tag):
        while self._stack:
            t, *_ = self._stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        row = next((r for _, r, _ in reversed(self._stack) if r is not None), None)
        col = next((c for _, _, c in reversed(self._stack) if c is not None), None)
        if row is not None and col is not None and data.strip():
            cell = self.rows.setdefault(row, {})
            cell[col] = (cell.get(col, "") + " " + data.strip()).strip()


def runs_table(dom: str) -> list[dict[str, str]]:
    p = _Grid()
    p.feed(dom)
    return [p.rows[k] for k in sorted(p.rows, key=lambda k: int(k) if k.lstrip("-").isdigit() else 0)]
