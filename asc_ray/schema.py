"""The field types of typed settings: what every config section (asc_ray.config, a model's own section in
asc_ray.models) is made of. Strict, so that a YAML typo is an error and never a silent conversion: `true` is no
integer and "3" no number; a whole number given for a float is stored as a float."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("not a number")
    return float(v)


def _number_as_given(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("not a number")
    return v


Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_number)]
Number = Annotated[
    int | float, BeforeValidator(_number_as_given)
]  # kept as written (an amount of a resource)
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


class Section(BaseModel):
    """A config section: known keys only, each checked against its type when set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
