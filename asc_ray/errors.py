"""The one user-facing error type.

Bad input (a missing file, a corrupt WAV, a logits table that does not match the data, an unknown config
key, ...) raises AscRayError naming the file or setting and the fix. Entry points catch it with
`run_cli`, print it as one message and exit with status 2: users never see a traceback for their mistakes.
"""

from __future__ import annotations

import os
import signal
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


_SIGTERM_SEEN = []  # Ray re-raises an interrupt inside ray.get() as a plain KeyboardInterrupt: remember the signal


def _on_sigterm(signum, frame):
    _SIGTERM_SEEN.append(signum)
    raise Terminated()


def handle_sigterm() -> None:
    """Turn SIGTERM into `Terminated` (a KeyboardInterrupt) in the main thread. Call again after ray.init():
    Ray's driver replaces the SIGTERM handler with one that aborts the process without cleaning up."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _stop_ray_quietly() -> None:
    """End this driver's Ray session now: work running in background threads (teacher fits) fails fast
    instead of keeping the process alive until it finishes."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C / kill while cleaning up: leave at once
        signal.signal(sig, lambda *_: os._exit(130))
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI main(): AscRayError -> one message on stderr, exit 2; Ctrl-C -> exit 130 and SIGTERM -> exit
    143, without a traceback, finished work kept."""
    handle_sigterm()
    # Ray Tune's own Ctrl-C handler stops trials "gracefully" and returns them unfinished, which would look
    # like failed students: let the interrupt reach us instead (Tune resumes the trials on the next run)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        code = main()
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated) or bool(_SIGTERM_SEEN)
        _stop_ray_quietly()
        print(
            f"\n{'terminated (SIGTERM)' if terminated else 'interrupted'}: finished work is kept; "
            "run the same command again to resume.",
            file=sys.stderr,
            flush=True,
        )
        code = 143 if terminated else 130
        if any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
        ):
            # a teacher fit blocked in a Ray call may never return once Ray is down, and Python joins such
            # threads before exiting: leave now (MLflow runs are closed and finished work is on disk already)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)
    except Exception as exc:  # noqa: BLE001 - only user errors are turned into a message
        err = find_user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
