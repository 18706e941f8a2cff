"""The one user-facing error type.

Bad input (a missing file, a corrupt WAV, a logits table that does not match the data, an unknown config
key, ...) raises AscRayError naming the file or setting and the fix. Entry points catch it with
`run_cli`, print it as one message and exit with status 2: users never see a traceback for their mistakes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path


class AscRayError(Exception):
    """A problem the user can fix: says what is wrong, where, and what to do."""

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.problem}{where}\n  fix: {self.fix}"

    def __reduce__(self):  # survives pickling across Ray processes
        return (_rebuild, (self.problem, self.path, self.fix))


def _rebuild(problem, path, fix):
    return AscRayError(problem, path=path, fix=fix)


def find_user_error(exc: BaseException) -> AscRayError | None:
    """The AscRayError behind `exc`, also when Ray wrapped it (RayTaskError, TrainingFailedError, ...)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, AscRayError):
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
        # ray.exceptions.RayTaskError keeps the original as .cause; Train V2 keeps worker errors in dicts
        for attr in ("worker_failures", "errors"):
            v = getattr(e, attr, None)
            if isinstance(v, dict):
                stack.extend(x for x in v.values() if isinstance(x, BaseException))
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException):
                stack.append(arg)
    # Ray sometimes re-raises only the string form: recognise our format
    text = str(exc)
    if "\n  fix: " in text:
        head, fix = text.rsplit("\n  fix: ", 1)
        return AscRayError(head.strip().splitlines()[-1], fix=fix.strip().splitlines()[0])
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a scheduler stopping the job), handled like Ctrl-C: finished work is kept."""


# Every stop signal seen. Ray re-raises an interrupt inside ray.get() as a plain KeyboardInterrupt, and a Ctrl-C
# that reaches the whole process group also stops Ray's workers, so the first exception out of main() can be a
# unit's failure or one raised while cleaning up: what was signalled decides the exit status, not the exception.
_SIGNALS_SEEN: list[int] = []


def _on_signal(signum, frame):
    _SIGNALS_SEEN.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def handle_sigterm() -> None:
    """Turn SIGTERM into `Terminated` (a KeyboardInterrupt) and SIGINT into KeyboardInterrupt in the main
    thread, remembering both. Call again after ray.init(): Ray's driver replaces the SIGTERM handler with one
    that aborts the process without cleaning up."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_signal)


def proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (so field 4, the parent pid, is [1]; field 22, the start
    time, is [19]); [] when unknown (no such process, not Linux). The name may hold spaces and ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux; elsewhere none)."""
    entries = os.listdir("/proc") if os.path.isdir("/proc") else []
    return [int(e) for e in entries if e.isdigit() and proc_stat(e)[1:2] == [str(pid)]]


def _stop_own_ray_node() -> None:
    """Leave a reaper for the processes of the raylet this driver started (none when it joined a cluster). The
    raylet and GCS share the driver's fate, but the raylet's dashboard and runtime-env agents then spend minutes
    trying to report its death to a GCS that died too. Stopping the raylet from here instead (SIGTERM, as
    `ray.shutdown()` does) races with Ray's core worker, which ends this process with status 1 when it sees the
    raylet go. So a detached shell waits for this process to be gone, then kills what the raylet had started."""
    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        raylets = [
            proc.pid
            for kind, proc in (node.live_processes() if node is not None else [])
            if kind == ray_constants.PROCESS_TYPE_RAYLET
        ]
        doomed = [pid for r in raylets for pid in _children(r)]
        if doomed:
            subprocess.Popen(
                [
                    "sh",
                    "-c",
                    f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.2; done; sleep 1; "
                    f"kill -9 {' '.join(map(str, doomed))} 2>/dev/null",
                ],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    except Exception:  # noqa: BLE001 - leaving anyway
        pass


def _leave_now(code: int) -> None:
    """Exit at once, without `ray.shutdown()`: shutting Ray down in-process while a background thread (a
    teacher's fit, a Tuner) is still in a Ray call makes Ray's core worker end the process itself, with status 1,
    before ours is set. Ray's node processes share the driver's fate; a reaper stops the raylet's agents."""
    sys.stdout.flush()
    sys.stderr.flush()
    _stop_own_ray_node()
    os._exit(code)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI main(): AscRayError -> one message on stderr, exit 2; Ctrl-C -> exit 130 and SIGTERM -> exit
    143, without a traceback, finished work kept."""
    handle_sigterm()
    # Ray Tune's own Ctrl-C handler stops trials "gracefully" and returns them unfinished, which would look
    # like failed students: let the interrupt reach us instead (Tune resumes the trials on the next run)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        code = main()
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt) and not _SIGNALS_SEEN:
            if isinstance(exc, Exception):
                err = find_user_error(exc)
                if err is not None:
                    print(f"error: {err}", file=sys.stderr)
                    sys.exit(2)
            raise  # a bug, or SystemExit: as it is
        terminated = isinstance(exc, Terminated) or signal.SIGTERM in _SIGNALS_SEEN
        code = 143 if terminated else 130
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C / kill while leaving: leave at once
            signal.signal(sig, lambda *_: os._exit(code))
        print(
            f"\n{'terminated (SIGTERM)' if terminated else 'interrupted'}: finished work is kept; "
            "run the same command again to resume.",
            file=sys.stderr,
            flush=True,
        )
        ray = sys.modules.get("ray")
        if (ray is not None and ray.is_initialized()) or any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
        ):
            # MLflow runs are closed and finished work is on disk already; Python would join a thread blocked
            # in a Ray call for as long as its teacher trains
            _leave_now(code)
        sys.exit(code)
    sys.exit(code or 0)
