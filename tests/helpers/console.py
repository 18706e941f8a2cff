"""Reading the console lines asc-ray writes through the templates that write them: every line a test or the
chaos harness looks for is a named `str.format` template in the module that emits it (asc_ray.pipeline.graph's
START, DONE, ...), so a change of wording changes the code and the tests together."""

from __future__ import annotations

import re
import string
from functools import cache


@cache
def pattern(template: str) -> re.Pattern:
    """The regex of a template's lines: its text as is, each field `{name}` (or `{name:spec}`) a named group of
    at least one character (a field named twice must say the same both times)."""
    out, seen = [], set()
    for text, field, _, _ in string.Formatter().parse(template):
        out.append(re.escape(text))
        if field is not None:
            out.append(f"(?P={field})" if field in seen else f"(?P<{field}>.+?)")
            seen.add(field)
    return re.compile("".join(out) + ("$" if template.endswith("}") else ""), re.M)


def said(template: str, text: str) -> re.Match | None:
    """The first line of `text` the template wrote (its fields as groups), or None."""
    return pattern(template).search(text)


def said_all(template: str, text: str) -> list[re.Match]:
    return list(pattern(template).finditer(text))


def head(template: str, **fields) -> str:
    """The template's text up to its first field left unnamed: `head(DONE, unit="tfs split25 seed0")` is
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
