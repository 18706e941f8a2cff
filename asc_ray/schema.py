"""The config's field types, and what each key changes (a model's own section is in its module under
asc_ray/models, a loss's in asc_ray/losses; asc_ray.sections assembles them, asc_ray.config loads the profiles).
Strict, so that a YAML typo is an error and never a silent conversion: `true` is no integer and "3" no number; a
whole number given for a float is stored as a float.

Every field says, where it is defined, what changing it does, with its bounds:
- `trains(...)`: what a unit trains into. It is in the resume key of every system that reads it (its section's
  systems, narrowed by `when`: asc_ray.systems.System.reads), so changing it retrains them.
- `picks(...)`: which units and trials there are and which one is kept (systems, seeds, a search). The graph
  and a student's key (asc_ray.pipeline.keys) hold it.
- `runs(...)`: how and where a run works (speed, resources, workers, paths, tracking). In no key: changing it
  retrains nothing.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic.fields import FieldInfo


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
Seed = Annotated[int, Strict(), at.Ge(0)]


class Section(BaseModel):
    """A config section: known keys only, each checked against its type when set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PathOrNone = str | None
Auto = Literal["auto"] | Bool


# ----------------------------------------------------------------------------------- what a key changes
TRAINS, PICKS, RUNS = "trains", "picks", "runs"
EFFECTS = (TRAINS, PICKS, RUNS)


def trains(*, when: dict[str, Any] | None = None, **bounds) -> Any:
    """A key that changes what a unit trains into: in the resume key of each system that reads its section and
    has the System attributes `when` gives (e.g. {"fms": True}: only the systems with Freq-MixStyle)."""
    return Field(**bounds, json_schema_extra={"effect": TRAINS, "when": when or {}})


def picks(**bounds) -> Any:
    """A key that decides which units and trials there are and which is kept (see the module doc)."""
    return Field(**bounds, json_schema_extra={"effect": PICKS})


def runs(**bounds) -> Any:
    """A key that changes how or where a run works, never what a unit trains into (see the module doc)."""
    return Field(**bounds, json_schema_extra={"effect": RUNS})


def effect(field: FieldInfo) -> str | None:
    """TRAINS, PICKS or RUNS, as the field declares it; None: it declares nothing."""
    return (
        (field.json_schema_extra or {}).get("effect") if isinstance(field.json_schema_extra, dict) else None
    )


def when(field: FieldInfo) -> dict[str, Any]:
    """The System attributes a system needs for a TRAINS key to reach its key (empty: every reader)."""
    return dict(field.json_schema_extra.get("when") or {})


# ------------------------------------------------------------------------------------------ sections
class Data(Section):
    split_dir: PathOrNone = (
        runs()
    )  # paths: what they hold is in each unit's data key (impulse responses: not)
    holdout_fraction: Float = trains(gt=0, lt=0.5)
    cache_dir: PathOrNone = runs()
    irs_dir: PathOrNone = runs()
    eval_dir: PathOrNone = runs()


class Teachers(Section):
    systems: list[Str] = picks()
    num_workers: Int = runs(ge=1)
    cpus_per_worker: Float = runs(ge=0)
    gpus_per_worker: Float = runs(ge=0)
    max_failures: Int = runs(ge=-1)  # -1: retried without end (Ray's FailureConfig)
    max_concurrent: Int = runs(ge=0)  # 0: no cap
    bcbl_epochs: Int = trains(when={"role": "teacher", "family": "bcbl"}, ge=0)  # 0: bcbl.epochs
    resources: dict[str, Any] = runs()  # Ray resource name -> amount (checked in asc_ray.config)
    critical_path_workers: Int = runs(ge=0)


class Students(Section):
    systems: list[Str] = picks()
    cpus_per_trial: Float = runs(ge=0)
    gpus_per_trial: Float = runs(ge=0)
    max_concurrent_trials: Int = runs(ge=0)  # 0: no cap
    max_failures: Int = runs(ge=-1)
    resources: dict[str, Any] = runs()
    num_samples: Int = picks(ge=1)
    search: dict[str, Any] = picks()  # dotted key -> values (checked in asc_ray.config against the key's own)
    seeds: list[Seed] = picks()
    critical_path_workers: Int = runs(ge=0)


class BaselineRecipe(Section):
    warmup_steps: Int = trains(ge=0)
    roll_s: Float = trains(ge=0)


class Augment(Section):
    mixup_alpha: Float = trains(when={"mixup": True}, gt=0)
    fms_p: Float = trains(when={"fms": True}, ge=0, le=1)
    fms_alpha: Float = trains(when={"fms": True}, gt=0)
    dir_p: Float = trains(when={"dir": True}, ge=0, le=1)
    freqm: Int = trains(ge=0)  # every front-end masks


class Pretrain(Section):
    """Read by the pretraining unit alone (asc_ray.train.pretrain.pretrain_key); its teachers' keys hold that
    unit's key, so a change here retrains them and nothing else."""

    corpus: Literal["none", "synthetic"] = picks()  # whether there is a pretraining unit
    classes: Int = trains(ge=2)
    clips_per_class: Int = trains(ge=2)
    corpus_seed: Int = trains(ge=0)
    epochs: Int = trains(ge=1)
    batch_size: Int = trains(ge=1)
    lr: Float = trains(gt=0)


class Train(Section):
    select: Literal["val", "last"] = trains()  # which epoch is kept
    epochs: Int = trains(ge=0)  # 0: off
    min_steps: Int = trains(ge=0)
    eval_every: Int = trains(ge=1)  # which epoch is kept
    checkpoint_every: Int = runs(ge=1)
    channels_last: Auto = runs()  # float rounding, no more than two eager GPU runs differ by
    compile: Literal["reduce-overhead"] | Bool = runs()
    amp: Auto = trains()  # bf16 rounding throughout
    device_augment: Bool = trains()  # another random stream, as another seed would be
    prefetch: Bool = runs()
    num_threads: Int = runs(ge=0)  # 0: Ray's CPUs


class Mlflow(Section):
    experiment: Str = runs()
    tracking_uri: PathOrNone = runs()


# ------------------------------------------------------------------------------------------- in words
def bounds(field: FieldInfo | None) -> str:
    """The field's range in words: '>= 1', 'in [0, 1]', '' for none."""
    lo = hi = None
    for m in field.metadata if field is not None else ():
        if isinstance(m, (at.Ge, at.Gt)):
            lo = ("[", m.ge) if isinstance(m, at.Ge) else ("(", m.gt)
        elif isinstance(m, (at.Le, at.Lt)):
            hi = ("]", m.le) if isinstance(m, at.Le) else (")", m.lt)
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    return ""


def expected(annotation: Any, field: FieldInfo | None = None) -> str:
    """What a value of this type (and the field's bounds) looks like, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        if set(args) == {str, type(None)}:
            return "a path/URI string or null"
        choices = [c for a in args for c in (typing.get_args(a) if typing.get_origin(a) is Literal else ())]
        if any(typing.get_args(a)[:1] == (bool,) for a in args):
            choices += [True, False]
        return "one of " + ", ".join(map(str, choices))
    base = typing.get_args(annotation)[0] if origin is Annotated else annotation
    words = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list, e.g. [a, b]",
        dict: "a mapping",
    }.get(typing.get_origin(base) or base, str(base))
    return f"{words} {bounds(field)}".strip()
