"""What a person sees on the console: progress lines, one message per user error, and a clean stop.

`run_cli(main)` runs a command-line main: an AscRayError is printed as one `error:` message (exit 2, no
traceback); Ctrl-C exits 130 and SIGTERM (`kill PID`, a scheduler stopping the job) 143, keeping finished work.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from asc_ray.errors import AGAIN, find_user_error

# the line an interrupted command leaves with ({how}: "interrupted" or "terminated (SIGTERM)")
INTERRUPTED = "{how}: finished work is kept; " + AGAIN + " to resume."


def log(msg: str) -> None:
    """One progress line of a long run, with the time."""
    print(f"[asc-ray {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finished work is kept."""


# Every stop signal seen. Ray re-raises an interrupt inside ray.get() as a plain KeyboardInterrupt, and a Ctrl-C
# that reaches the whole process group also stops Ray's workers, so the first exception out of main() can be a
# unit's failure or one raised while cleaning up: what was signalled decides the exit status, not the exception.
_SIGNALS_SEEN: list[int] = []

# Called when the process leaves at once after an interrupt (os._exit skips atexit): the Ray runtime adds the
# clean-up of the local Ray it started (asc_ray.pipeline.runtime).
LEAVE_HOOKS: list[Callable[[], None]] = []


def _on_signal(signum, frame):
    _SIGNALS_SEEN.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def handle_sigterm() -> None:
    """Turn SIGTERM into `Terminated` and SIGINT into KeyboardInterrupt in the main thread, remembering both.
    Call again after ray.init(): Ray's driver replaces the SIGTERM handler with one that aborts the process
    without cleaning up."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_signal)


def _leave_now(code: int) -> None:
    """Exit at once, without `ray.shutdown()`: shutting Ray down in-process while a background thread (a
    teacher's fit, a Tuner) is still in a Ray call makes Ray's core worker end the process itself, with status 1,
    before ours is set."""
    sys.stdout.flush()
    sys.stderr.flush()
    for hook in LEAVE_HOOKS:
        try:
            hook()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
    os._exit(code)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line main(): AscRayError -> one message on stderr, exit 2; Ctrl-C -> exit 130 and SIGTERM
    -> exit 143, without a traceback, finished work kept."""
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
            "\n" + INTERRUPTED.format(how="terminated (SIGTERM)" if terminated else "interrupted"),
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
