"""Running a server for a person at the console (the MLflow UI, a served model): on a free port, its link printed
only once it answers, its own output kept out of the way until then, and stopped within seconds on Ctrl-C.

    with_port(host, port, default) -> the port to use (the default's next free one, saying so)
    Server(args, env, what, health).run(link_line) -> waits until Ctrl-C; an AscRayError if it never answers
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

from asc_ray.errors import AscRayError
from asc_ray.procs import command_line, port_holder

PORT_TAKEN = "port {port} on {host} is taken by {holder}"
PORT_MOVED = "port {port} is taken by {holder}: using port {new} instead"
STARTING = "starting {what} (its link follows once it answers; Ctrl-C stops it)"
NO_ANSWER = "{what} exited (status {code}) before answering: {last}"
STOPPED = "{what} stopped by itself (status {code}): {last}"
START_TIMEOUT_S = 300.0  # MLflow's UI took 70-100 s to answer on a loaded 2-core machine
STOP_GRACE_S = 2.0  # after SIGTERM, before SIGKILL: a Ctrl-C is done in seconds
PORTS_TRIED = 20


def holder(port: int) -> str:
    pid = port_holder(port)
    if pid is None:
        return "another program (not one of this user's: `ss -ltnp` names it)"
    return f"pid {pid} ({command_line(pid) or 'unknown'})"


def port_free(host: str, port: int) -> bool:
    """Whether a server may listen on host:port (as servers do, with SO_REUSEADDR)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise AscRayError(
            f"cannot listen on '{host}': {e.strerror}", path="--host", fix="pass an address of this machine"
        ) from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise AscRayError(
                f"cannot listen on {host}:{port}: {e.strerror}",
                path="--host/--port",
                fix="pass an address of this machine and a port above 1023",
            ) from None
    return True


def with_port(host: str, port: int | None, default: int, say) -> int:
    """`port` when given and free (taken: refused, naming the holder), else `default` or the next free port
    after it (saying who holds the default)."""
    if port is not None:
        if not port_free(host, port):
            raise AscRayError(
                PORT_TAKEN.format(port=port, host=host, holder=holder(port)),
                path="--port",
                fix=f"stop that program, or pass another --port (without --port the first free one from {default} "
                "is taken)",
            )
        return port
    for p in range(default, default + PORTS_TRIED):
        if port_free(host, p):
            if p != default:
                say(PORT_MOVED.format(port=default, holder=holder(default), new=p))
            return p
    raise AscRayError(
        f"ports {default}-{default + PORTS_TRIED - 1} on {host} are all taken",
        path="--port",
        fix="pass a free --port",
    )


def _local(host: str) -> str:
    """Where this machine reaches a server listening on `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def url(host: str, port: int) -> str:
    h = _local(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(address, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """`python -m ...` as a child in a session of its own (it starts workers and job runners that must stop
    with it), its output in a log file and, once it answers, on stderr too."""

    def __init__(self, args: list[str], env: dict, what: str, health: str):
        self.args, self.env, self.what, self.health = args, env, what, health
        self.ready = threading.Event()
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        fd, name = tempfile.mkstemp(prefix="asc-ray-server-", suffix=".log")
        self.log = Path(name)
        self._log = os.fdopen(fd, "w", encoding="utf-8", errors="replace")

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            self.tail.append(line.rstrip())
            self._log.write(line)
            self._log.flush()
            if self.ready.is_set():
                sys.stderr.write(line)
                sys.stderr.flush()

    def _last(self) -> str:
        lines = [ln for ln in self.tail if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln or "Exception" in ln]
        return (errors or lines or ["no output"])[-1].strip()[:300]

    def run(self, link_line: str, say) -> NoReturn:
        env = dict(self.env)
        # the venv's bin/ first on PATH: MLflow starts uvicorn by name, which a shell without the venv lacks
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        say(STARTING.format(what=self.what))
        proc = subprocess.Popen(
            [sys.executable, *self.args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()
        fix = f"its whole output is in {self.log}"
        failed = False
        try:
            end = time.monotonic() + START_TIMEOUT_S
            while not answers(self.health):
                code = proc.poll()
                if code is not None:
                    time.sleep(0.2)  # the last lines still in the pipe
                    raise AscRayError(NO_ANSWER.format(what=self.what, code=code, last=self._last()), fix=fix)
                if time.monotonic() > end:
                    raise AscRayError(
                        f"{self.what} did not answer in {START_TIMEOUT_S:.0f} s", path=self.health, fix=fix
                    )
                time.sleep(0.25)
            self.ready.set()
            print(link_line, flush=True)
            code = proc.wait()
            raise AscRayError(STOPPED.format(what=self.what, code=code, last=self._last()), fix=fix)
        except AscRayError:
            failed = True
            raise
        finally:  # Ctrl-C, SIGTERM, an error: the server and everything it started go with this command
            self.stop(proc)
            if not failed:  # a stop asked for: nothing to look at
                self.log.unlink(missing_ok=True)

    def stop(self, proc: subprocess.Popen) -> None:
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # what outlived the server (its job runner)
            os.killpg(proc.pid, signal.SIGKILL)
        self._log.close()
