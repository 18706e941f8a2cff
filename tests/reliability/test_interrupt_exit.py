"""How a CLI leaves when it is stopped (fast: plain Python subprocesses, no Ray). A Ctrl-C sent to a terminal's
process group also stops the pipeline's Ray workers, so the exception that reaches `run_cli` may be a unit's
failure or one raised while cleaning up, not the KeyboardInterrupt: the signal decides the exit status."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers.procs import ROOT, cli_env, sigint_default

from asc_ray.errors import AGAIN

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from asc_ray.console import run_cli
    from asc_ray.errors import AscRayError

    def main():
        case = sys.argv[1]
        if case == "bug":
            raise RuntimeError("a real bug")
        if case == "user":
            raise AscRayError("bad thing", path="x.csv", fix="do this")
        sig = signal.SIGTERM if case.startswith("term") else signal.SIGINT
        try:
            os.kill(os.getpid(), sig)
            signal.pause()
        finally:
            if case.endswith("replaced"):  # cleaning up failed: this exception replaces the interrupt
                raise RuntimeError("1 unit(s) failed: the worker was stopped by the same Ctrl-C")

    run_cli(main)
    """
)


def _run(case):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, case],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=sigint_default,  # the script's own SIGINT must arrive
    )


def _says_work_is_kept(stderr: str) -> bool:
    """One message, no traceback, and the fix: the same command resumes."""
    return "Traceback" not in stderr and AGAIN in stderr


def test_an_interrupt_exits_130_even_when_another_exception_replaced_it():
    for case in ("int", "int_replaced"):
        r = _run(case)
        assert r.returncode == 130, (case, r.stderr)
        assert _says_work_is_kept(r.stderr) and "SIGTERM" not in r.stderr, r.stderr


def test_a_sigterm_exits_143_even_when_another_exception_replaced_it():
    for case in ("term", "term_replaced"):
        r = _run(case)
        assert r.returncode == 143, (case, r.stderr)
        assert _says_work_is_kept(r.stderr) and "SIGTERM" in r.stderr, r.stderr


def test_without_a_signal_a_bug_keeps_its_traceback_and_a_user_error_is_one_message():
    r = _run("bug")
    assert r.returncode == 1 and "RuntimeError: a real bug" in r.stderr and "Traceback" in r.stderr
    r = _run("user")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert lines == ["error: bad thing (x.csv)", "  fix: do this"]  # the problem, the file, the fix
