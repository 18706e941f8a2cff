"""The one user-facing error type.

Bad input (a missing file, a corrupt WAV, a logits table that does not match the data, an unknown config
key, ...) raises AscRayError naming the file or setting and the fix. Entry points catch it with
`asc_ray.console.run_cli`, print it as one message and exit with status 2: users never see a traceback for
their mistakes.
"""

from __future__ import annotations

from pathlib import Path

# how a message says that finished work is kept and a run resumes (interrupts, failed units, a full disk, ...)
AGAIN = "run the same command again"


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
