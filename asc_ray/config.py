"""The config as typed data: a profile (configs/full.yaml, configs/smoke.yaml), an optional --config FILE and
key=value overrides, merged in that order and checked against the schema (asc_ray.sections) before any work
starts.

    cfg = load_config(profile="smoke", config_file=None, overrides=["bcbl.epochs=3"])
    cfg.bcbl.epochs  # -> 3

configs/full.yaml holds every key with its value and a comment (the report's settings); the schema holds each
key's type, range and what it changes. An unknown key, a value of the wrong type or out of its range is an
AscRayError naming the key, where it came from and the fix (every bad override in one error), so a typo is
caught in the first second, not an hour into training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from asc_ray import sections
from asc_ray.console import log
from asc_ray.data.tau import SPLITS
from asc_ray.errors import AscRayError
from asc_ray.io import read_yaml
from asc_ray.schema import Section, expected
from asc_ray.sections import PROFILES
from asc_ray.systems import SYSTEMS, check_needs

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_MISSING_FIX = "pass an existing YAML file to --config"
# Which profile a command uses when none is given, and why (the first line it prints)
PROFILE_LINE = "profile {profile}: {why}"
GIVEN = "given with --profile"
AUTO_GPU = "no --profile given, {n} GPU(s) visible: the report's settings"
AUTO_CLUSTER = "no --profile given, joining the Ray cluster at {address}: its GPUs are not visible from here"
AUTO_NO_GPU = (
    "no --profile given and no GPU visible: small models and few epochs, for a CPU (not comparable with the "
    "report's Table 3; --profile full for its settings)"
)
# the full profile on the real TAU22 takes ~2,600 h on 2 CPU cores (docs/cluster.md, "Cost and time estimate")
FULL_CPU_CORE_HOURS = 5_200
FULL_WITHOUT_GPU = (
    "warning: the full profile without a GPU: about {hours:,.0f} h ({days:,.0f} days) on this machine's {cores} "
    "CPU cores for the real TAU22 at the profile's epochs (docs/cluster.md); --profile smoke runs in minutes"
)
FREE_MAPS = {"students.search", "teachers.resources", "students.resources"}  # their keys are the user's own


# --------------------------------------------------------------------------------------- errors, types
def _field(model: type[BaseModel], loc: tuple) -> tuple[str, Any, type[BaseModel] | None, FieldInfo | None]:
    """(dotted key, the field's annotation, the model that holds it, the field) of a pydantic error location."""
    parts, annotation, holder, info = [], None, model, None
    for part in loc:
        if isinstance(part, str) and isinstance(model, type) and part in model.model_fields:
            parts.append(part)
            holder, info = model, model.model_fields[part]
            annotation = info.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        elif isinstance(part, str) and model is not None:
            parts.append(part)  # a key the model does not have
            holder = model
            break
        else:
            if typing.get_origin(annotation) is dict and isinstance(part, str):
                parts.append(part)
            break
    return ".".join(parts), annotation, holder, info


def _unknown(key: str, holder: type[BaseModel], source: str) -> AscRayError:
    known = ", ".join(sorted(k for k in holder.model_fields if k != "profile"))
    return AscRayError(
        f"unknown config key '{key}'", path=source, fix=f"check the spelling; valid keys here: {known}"
    )


RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}  # pydantic's
DOCS = " (see docs/config.md)"


def bad_value(err: dict, key: str, annotation: Any, info: FieldInfo | None, source: str) -> AscRayError:
    """A value (pydantic's error `err` about it) of the wrong type, or out of the field's range."""
    want = expected(annotation, info)
    what = "is out of range" if err["type"] in RANGE_ERRORS else "has the wrong type"
    got = f"{err.get('input')!r}" + (" in it" if typing.get_origin(annotation) is list else "")
    return AscRayError(
        f"config key '{key}' {what}: got {got}, expected {want}",
        path=source,
        fix=f"set {key} to {want}{DOCS}",
    )


def _one(err: dict, source: str) -> AscRayError:
    key, annotation, holder, info = _field(sections.Config, err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown(key, holder, source)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return AscRayError(
            f"config key '{key}' must be a mapping",
            path=source,
            fix=f"write it as `{key}.<name>=value` or a nested YAML block",
        )
    return bad_value(err, key, annotation, info, source)


def combined(errors: list[AscRayError]) -> AscRayError:
    """One error for several (a file's, or the overrides'): each problem where it came from, and each fix."""
    if len(errors) == 1:
        return errors[0]
    fixes = dict.fromkeys(e.fix.removesuffix(DOCS) for e in errors)
    return AscRayError(
        "; ".join(f"{e.problem} ({e.path})" for e in errors),
        path=None,
        fix="; ".join(fixes) + (DOCS if any(e.fix.endswith(DOCS) for e in errors) else ""),
    )


def _error(e: ValidationError, source: str) -> AscRayError:
    return combined([_one(err, source) for err in e.errors()])


# -------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, "config file", CONFIG_MISSING_FIX)
    if not isinstance(data, dict):
        raise AscRayError(
            "config file must hold a mapping of keys", path=path, fix="write `key: value` lines"
        )
    return data


def _override_to_dict(item: str) -> dict:
    if "=" not in item:
        raise AscRayError(
            f"override '{item}' is not of the form key=value",
            path="command line",
            fix="write e.g. bcbl.epochs=10",
        )
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    if parts[:2] == ["students", "search"] and len(parts) > 2:  # its own keys are dotted: keep them whole
        parts = parts[:2] + [".".join(parts[2:])]
    out: dict = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in update.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict) and key not in FREE_MAPS:
            out[k] = _merge(out[k], v, f"{key}.")
        else:
            out[k] = v
    return out


def _validate(data: dict, source: str):
    try:
        return sections.Config.model_validate(data)
    except ValidationError as e:
        raise _error(e, source) from None


def load_config(
    profile: str = "full", config_file: str | Path | None = None, overrides: list[str] | None = None
):
    """Merge profile, file and overrides; each layer is checked as it comes, so an error names its source."""
    if profile not in PROFILES:
        raise AscRayError(f"unknown profile '{profile}'", path="--profile", fix="use --profile full or smoke")
    data = _read_yaml(CONFIG_DIR / "full.yaml")
    _validate(data, "configs/full.yaml")
    layers = []
    if profile != "full":
        layers.append((_read_yaml(CONFIG_DIR / f"{profile}.yaml"), f"profile {profile}"))
    if config_file:
        layers.append((_read_yaml(Path(config_file)), str(config_file)))
    layers += [(_override_to_dict(item), f"override {item}") for item in overrides or []]
    refused = []  # every bad override at once, in one error
    for layer, source in layers:
        if "profile" in layer:  # the profile is chosen with --profile
            raise _unknown("profile", sections.Config, source)
        try:
            _validate(merged := _merge(data, layer), source)
        except AscRayError as e:
            if not source.startswith("override "):
                raise
            refused.append(e)
            continue
        data = merged
    if refused:
        raise combined(refused)
    cfg = _validate(data, "config")
    cfg.profile = profile
    _check_semantics(cfg)
    return cfg


def _check_semantics(cfg) -> None:
    """What a type or a range cannot say: known systems that can be trained together, Ray resources, searches."""
    for group in ("teachers", "students"):
        valid = [n for n, s in SYSTEMS.items() if s.role == group[:-1]]
        for name in getattr(cfg, group).systems:
            if name not in valid:
                raise AscRayError(
                    f"unknown {group[:-1]} '{name}' in {group}.systems",
                    path="config",
                    fix="choose from " + ", ".join(valid),
                )
    check_needs(list(cfg.teachers.systems) + list(cfg.students.systems))
    for group in ("teachers", "students"):
        for name, amount in getattr(cfg, group).resources.items():
            if name.lower() in ("cpu", "gpu", "memory"):  # Ray's own names: Tune would read "gpu" as GPUs
                per = (
                    "cpus_per_worker / gpus_per_worker"
                    if group == "teachers"
                    else "cpus_per_trial / gpus_per_trial"
                )
                raise AscRayError(
                    f"{group}.resources.{name} names one of Ray's own resources",
                    path="config",
                    fix=f"set {group}.{per} for CPUs and GPUs; give custom resources another name, e.g. gpu_slot",
                )
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise AscRayError(
                    f"{group}.resources.{name} must be a number >= 0, got {amount!r}",
                    path="config",
                    fix=f"e.g. {group}.resources={{large_gpu: 1}}",
                )
    for key, values in cfg.students.search.items():
        section, _, name = key.partition(".")
        holder = getattr(cfg, section, None)
        if not isinstance(holder, Section) or name not in type(holder).model_fields:
            raise AscRayError(
                f"unknown search key '{key}' in students.search",
                path="config",
                fix="search over existing keys, e.g. kd.lam, kd.temperature",
            )
        if not isinstance(values, list) or not values:
            raise AscRayError(
                f"students.search.{key} must be a non-empty list of values",
                path="config",
                fix=f"e.g. students.search.{key}=[0.9,0.98]",
            )
        for v in values:
            try:
                setattr(holder.model_copy(), name, v)
            except ValidationError as e:
                info = type(holder).model_fields[name]
                raise bad_value(e.errors()[0], key, info.annotation, info, "students.search") from None
    if cfg.train.select == "last" and (cfg.students.search or cfg.students.num_samples > 1):
        raise AscRayError(
            "students.search / students.num_samples choose among trials on the validation holdout, but "
            "train.select=last trains without one",
            path="config",
            fix="add train.select=val (a validation holdout carved from each split picks the trial)",
        )
    seeds = cfg.students.seeds
    if not seeds or len(set(seeds)) != len(seeds):
        raise AscRayError(
            f"students.seeds must be distinct seeds, at least one, got {seeds}",
            path="config",
            fix="e.g. students.seeds=[0,1,2] (each student trains once per seed)",
        )


# ------------------------------------------------------------------------------------------- helpers
def with_overrides(cfg, flat: dict[str, Any]):
    """A copy of cfg with dotted keys set (a search trial's values), each checked against its type."""
    out = cfg.model_copy(deep=True)
    for key, value in flat.items():
        *head, last = key.split(".")
        cur = out
        for p in head:
            cur = getattr(cur, p)
        setattr(cur, last, value)
    return out


def as_dict(cfg) -> dict:
    return cfg.model_dump() if isinstance(cfg, BaseModel) else cfg


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
    """{'bcbl.epochs': 150, ...}: what MLflow gets as params."""
    out: dict[str, Any] = {}
    for k, v in as_dict(cfg).items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(obj: Any) -> str:
    """Stable short hash of any JSON-able object (config subsets, data fingerprints)."""
    blob = json.dumps(
        obj, sort_keys=True, default=lambda o: as_dict(o) if isinstance(o, BaseModel) else str(o)
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_yaml(cfg, why: str = "") -> str:
    """The resolved config as YAML, in full.yaml's order: what a run will use; `why`: why this profile."""
    body = yaml.safe_dump({k: v for k, v in as_dict(cfg).items() if k != "profile"}, sort_keys=False)
    why = f" ({why})" if why else ""
    return f"# asc-ray config, profile {cfg.profile}{why}, with --config and overrides applied\n{body}"


# ------------------------------------------------------------------------------------- command line
def positive_epochs(v: str) -> int:
    if not v.isdigit() or int(v) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of epochs >= 1, got '{v}'")
    return int(v)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The options every command that trains shares: which config, and --print-config to see it."""
    p.add_argument(
        "--profile",
        default=None,
        choices=PROFILES,
        help="full = the report's settings (150 epochs, AudioSet PaSST: for GPUs); smoke = minutes on a laptop "
        "CPU (default: full where a GPU is visible or a Ray cluster is joined, else smoke)",
    )
    p.add_argument("--config", default=None, metavar="FILE", help="YAML file of config overrides")
    p.add_argument(
        "--epochs",
        type=positive_epochs,
        default=None,
        metavar="N",
        help="every model trains exactly N epochs, whatever the profile says (train.epochs=N): a quick check "
        "of data and set-up end to end",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit (nothing runs)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. bcbl.epochs=10")


def choose_profile(given: str | None) -> tuple[str, str]:
    """(profile, why): the one given, else full where a GPU is visible here or a Ray cluster is joined
    (RAY_ADDRESS), else smoke."""
    if given:
        return given, GIVEN
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return "full", AUTO_CLUSTER.format(address=address)
    n = torch.cuda.device_count()
    return ("full", AUTO_GPU.format(n=n)) if n else ("smoke", AUTO_NO_GPU)


def profile_warning(profile: str) -> str | None:
    """The full profile with no GPU visible and no cluster to join: how long it would take."""
    if profile != "full" or os.environ.get("RAY_ADDRESS") or torch.cuda.device_count():
        return None
    cores = os.cpu_count() or 1
    hours = FULL_CPU_CORE_HOURS / cores
    return FULL_WITHOUT_GPU.format(hours=hours, days=hours / 24, cores=cores)


def config_from_args(args: argparse.Namespace):
    """The config of parsed add_config_arguments() options; --epochs comes last (it wins over a family's epochs
    given as key=value). The profile and why come first: on the first line printed, or with --print-config in
    the YAML's header, after which the process exits."""
    overrides = [*args.overrides, f"train.epochs={args.epochs}"] if args.epochs else list(args.overrides)
    profile, why = choose_profile(args.profile)
    cfg = load_config(profile, args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg, why), end="")
        sys.exit(0)
    log(PROFILE_LINE.format(profile=profile, why=why))
    if warning := profile_warning(profile):
        log(warning)
    return cfg


def split_list(text: str) -> list[int]:
    """--splits 5,25,100 -> [5, 25, 100], each one of the DCASE 2024 splits."""
    fix = "choose from " + ",".join(map(str, SPLITS)) + ", e.g. --splits 25,100"
    try:
        splits = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise AscRayError(f"--splits must be numbers, got '{text}'", path="--splits", fix=fix) from None
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise AscRayError(f"unknown split(s) {bad}", path="--splits", fix=fix)
    return splits
