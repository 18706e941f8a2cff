"""Reading the console lines asc-ray writes through the templates that write them: every line a test or the
chaos harness looks for is a named `str.format` template in the module that emits it (asc_ray.pipeline.graph's
START, DONE, ...), so a change of wording changes the code and the tests together."""

from __future__ import annotations

import re
import string
from functools import cache

STAMP = r"\[asc-ray \d\d:\d\d:\d\d\] "  # what asc_ray.console.log puts before each driver line


@cache
def pattern(template: str, logged: bool = False) -> re.Pattern:
    """The regex of a template's lines: its text as is, each field `{name}` (or `{name:spec}`) a named group (a
    field named twice must say the same both times; one that ends the template takes the rest of the line).
    `logged`: a whole line of asc_ray.console.log (its stamp, then the template)."""
    parts = list(string.Formatter().parse(template))
    out, seen = [f"^{STAMP}" if logged else ""], set()
    for i, (text, field, _, _) in enumerate(parts):
        out.append(re.escape(text))
        if field is None:
            continue
        last = i == len(parts) - 1
        out.append(f"(?P={field})" if field in seen else f"(?P<{field}>.*)$" if last else f"(?P<{field}>.+?)")
        seen.add(field)
    return re.compile("".join(out), re.M)


def said(template: str, text: str, logged: bool = False) -> re.Match | None:
    """The first line of `text` the template wrote (its fields as groups), or None."""
    return pattern(template, logged).search(text)


def said_all(template: str, text: str, logged: bool = False) -> list[re.Match]:
    return list(pattern(template, logged).finditer(text))


def head(template: str, **fields) -> str:
    """The template's text up to its first field not given: `head(DONE, unit="tfs split25 seed0")` is
    "done tfs split25 seed0 in ", what every such line starts with."""
    out = []
    for text, field, spec, _ in string.Formatter().parse(template):
        out.append(text)
        if field is None:
            continue
        if field not in fields:
            break
        out.append(format(fields[field], spec or ""))
    return "".join(out)
