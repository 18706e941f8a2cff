"""The config's schema, assembled: its top-level keys, asc_ray.schema's sections, each architecture's section and
the architectures' widths (asc_ray.models), each loss's section (asc_ray.losses), in configs/full.yaml's order.
A new architecture or loss brings its section without a change here; asc_ray.config loads the profiles into
`Config` and checks what a type cannot say. `field(key)`: what a dotted key declares (asc_ray.schema)."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from asc_ray.losses import LOSSES
from asc_ray.models import ARCHITECTURES, channels_section
from asc_ray.schema import (
    Augment,
    Auto,
    BaselineRecipe,
    Data,
    Mlflow,
    PathOrNone,
    Pretrain,
    Section,
    Seed,
    Students,
    Teachers,
    Train,
    runs,
    trains,
)

PROFILES = ("full", "smoke")


def schema() -> type[Section]:
    """The root schema, from the registries as they are now."""
    arch = {a.section: (a.settings, ...) for a in ARCHITECTURES.values()}
    loss = {name: (loss.settings, ...) for name, loss in LOSSES.items() if loss.settings is not None}
    fields = {
        "seed": (Seed, trains()),
        "data": (Data, ...),
        "teachers": (Teachers, ...),
        "students": (Students, ...),
        "channels": (channels_section(), ...),
        **arch,
        "pretrain": (Pretrain, ...),
        "baseline": (BaselineRecipe, ...),  # the `baseline` system's own recipe: overrides bcbl for it
        "augment": (Augment, ...),
        **loss,
        "train": (Train, ...),
        "mlflow": (Mlflow, ...),
        "use_gpu": (Auto, runs()),
        "storage_path": (PathOrNone, runs()),
        "profile": (Literal[PROFILES], runs(default="full")),  # set by load_config, not by a user
    }
    return create_model("Config", __base__=Section, **fields)


Config = schema()


def field(key: str, root: type[BaseModel] | None = None) -> FieldInfo | None:
    """The field a dotted key names (a key inside a free mapping such as students.search: the mapping's);
    None: no such key."""
    cur, info = root or Config, None
    for part in key.split("."):
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return info if typing.get_origin(cur) is dict else None
        if part not in cur.model_fields:
            return None
        info = cur.model_fields[part]
        cur = info.annotation
    return info


def leaves(model: type[BaseModel] | None = None, prefix: str = "") -> dict[str, FieldInfo]:
    """Every key of the schema that holds a value (not a section), dotted, with its field."""
    out: dict[str, FieldInfo] = {}
    for name, info in (model or Config).model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out.update(leaves(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out
