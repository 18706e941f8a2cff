"""The config's sections and the field types they are made of (a model's own section is in its module under
asc_ray/models; asc_ray.config assembles them and loads the profiles). Strict, so that a YAML typo is an error
and never a silent conversion: `true` is no integer and "3" no number; a whole number given for a float is
stored as a float."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

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


PathOrNone = str | None
Auto = Literal["auto"] | Bool


class Data(Section):
    split_dir: PathOrNone
    holdout_fraction: Float
    cache_dir: PathOrNone
    irs_dir: PathOrNone
    eval_dir: PathOrNone


class Teachers(Section):
    systems: list[Str]
    num_workers: Int
    cpus_per_worker: Float
    gpus_per_worker: Float
    max_failures: Int
    max_concurrent: Int
    bcbl_epochs: Int
    resources: dict[str, Any]  # Ray resource name -> amount (checked below)
    critical_path_workers: Int


class Students(Section):
    systems: list[Str]
    cpus_per_trial: Float
    gpus_per_trial: Float
    max_concurrent_trials: Int
    max_failures: Int
    resources: dict[str, Any]
    num_samples: Int
    search: dict[str, Any]  # dotted key -> values (checked below against the key's own type)
    seeds: list[Int]
    critical_path_workers: Int


class Channels(Section):
    bcbl32: Int
    bcbl24: Int


class BaselineRecipe(Section):
    warmup_steps: Int
    roll_s: Float


class Augment(Section):
    mixup_alpha: Float
    fms_p: Float
    fms_alpha: Float
    dir_p: Float
    freqm: Int


class KD(Section):
    lam: Float
    temperature: Float
    kl_reduction: Literal["mean", "batchmean"]


class FocusNet(Section):
    alpha: Float
    beta: Float
    mask: Literal["report", "reference"]


class Pretrain(Section):
    corpus: Literal["none", "synthetic"]
    classes: Int
    clips_per_class: Int
    corpus_seed: Int
    epochs: Int
    batch_size: Int
    lr: Float


class Train(Section):
    select: Literal["val", "last"]
    epochs: Int
    min_steps: Int
    eval_every: Int
    checkpoint_every: Int
    channels_last: Auto
    compile: Literal["reduce-overhead"] | Bool
    amp: Auto
    device_augment: Bool
    prefetch: Bool
    num_threads: Int


class Mlflow(Section):
    experiment: Str
    tracking_uri: PathOrNone


def expected(annotation: Any) -> str:
    """What a value of this type looks like, in words."""
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
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list, e.g. [a, b]",
        dict: "a mapping",
    }.get(typing.get_origin(base) or base, str(base))
