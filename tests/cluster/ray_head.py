"""A real, private Ray head for the cluster tests: `ray start --head --block` from the project's venv, with
its own temp dir, free ports and its own auth token, so that it never meets another Ray on this machine.

Stopping it never uses `ray stop` (that kills every Ray process on the machine, other people's included):
the head is a `ray start --block` process in its own session; SIGTERM makes it shut down the processes it
started, and whatever is left in that session (its raylet's workers) is killed by process group.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent  # the venv that runs the tests: its `python` is the job's python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class RayHead:
    def __init__(self, num_cpus: int = 2):
        # short path: Ray's unix sockets live under it (108-byte limit)
        self.tmp = Path(tempfile.mkdtemp(prefix="asc", dir="/tmp"))
        self.temp_dir = self.tmp / "r"
        self.token_path = self.tmp / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        self.token_path.chmod(0o600)
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.num_cpus = num_cpus
        self.log = self.tmp / "head.log"
        self.proc: subprocess.Popen | None = None

    def env(self, token: bool = True, **extra: str) -> dict:
        """Environment of a process that talks to this head (the head itself, `ray job ...` clients)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI"))
        }
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_TMPDIR"] = str(self.tmp)  # nothing of ours in /tmp/ray (ray_current_cluster stays untouched)
        if token:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        env.update(extra)
        return env

    def start(self, timeout: float = 120) -> RayHead:
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,
                start_new_session=True,
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ray start --head exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            try:  # the job API answers once the head (dashboard + job manager) is up
                if http_get(f"{self.address}/api/jobs/", self.token())[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"Ray head not ready after {timeout}s:\n{self.log.read_text()}")

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def auth_mode(self) -> str:
        return json.loads(http_get(f"{self.address}/api/authentication_mode")[1])["authentication_mode"]

    def ray(
        self, *args: str, token: bool = True, cwd: str | Path | None = None, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess:
        """`ray <args>` as a client of this head, with this head's token (or none, token=False)."""
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args],
            env=self.env(token, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )

    def session_dir(self) -> Path:
        return (self.temp_dir / "session_latest").resolve()

    def _own_pids(self) -> list[int]:
        """Processes still running in the head's session (all started by this head)."""
        if self.proc is None:
            return []
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.getsid(int(p.name)) == self.proc.pid:
                        pids.append(int(p.name))
                except (ProcessLookupError, PermissionError):
                    pass
        return pids

    def stop(self, timeout: float = 60) -> list[int]:
        """Stop this head only; returns the pids of its session still alive afterwards (should be none)."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ray start --block: shuts its node down and exits
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + 20
        while self._own_pids() and time.time() < deadline:
            time.sleep(0.5)
        left = self._own_pids()
        for pid in left:  # stragglers of our own session only
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        return left

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
