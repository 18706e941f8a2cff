"""Configs as data: a profile (configs/full.yaml, configs/smoke.yaml), an optional --config FILE and
key=value overrides, merged in that order and checked against full.yaml's schema before any work starts.

    cfg = load_config(profile="smoke", config_file=None, overrides=["bcbl.epochs=3"])
    cfg["bcbl"]["epochs"]  # -> 3

An unknown key or a value of the wrong type is an AscRayError naming the key and the fix, so a typo is
caught in the first second, not an hour into training.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from asc_ray.errors import AscRayError

CONFIG_DIR = Path(__file__).parent / "configs"
PROFILES = ("full", "smoke")

# Keys whose value must be one of a few words.
CHOICES = {
    "passt.size": ("full", "small"),
    "focusnet.variant": ("report", "reference"),
    "kd.kl_reduction": ("mean", "batchmean"),
    "train.select": ("val", "last"),
    "train.channels_last": ("auto", True, False),
    "train.amp": ("auto", True, False),
    "use_gpu": ("auto", True, False),
}
# Keys whose default is null but which take a path / URI string.
NULLABLE_STR = {
    "data.split_dir",
    "data.cache_dir",
    "data.irs_dir",
    "data.eval_dir",
    "mlflow.tracking_uri",
    "storage_path",
}
# Keys that are free-form mappings (their inner keys are checked elsewhere).
FREE_MAPS = {"students.search", "teachers.resources", "students.resources"}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise AscRayError("config file not found", path=path, fix="pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise AscRayError(
            f"config file is not valid YAML: {e}", path=path, fix="fix the YAML syntax"
        ) from None
    if not isinstance(data, dict):
        raise AscRayError(
            "config file must hold a mapping of keys", path=path, fix="write `key: value` lines"
        )
    return data


def schema() -> dict:
    """The full profile: every valid key with its default (and so its type)."""
    return _read_yaml(CONFIG_DIR / "full.yaml")


def _check_value(key: str, value: Any, default: Any, source: str) -> Any:
    def bad(expected: str):
        return AscRayError(
            f"config key '{key}' has the wrong type: got {value!r}, expected {expected}",
            path=source,
            fix=f"set {key} to {expected} (see docs/config.md)",
        )

    if key in CHOICES:
        if value not in CHOICES[key]:
            raise bad("one of " + ", ".join(map(str, CHOICES[key])))
        return value
    if key in NULLABLE_STR:
        if value is None or isinstance(value, str):
            return value
        raise bad("a path/URI string or null")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise bad("a list, e.g. [a, b]")
    return value


def _merge(base: dict, update: dict, ref: dict, source: str, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in ref:
            known = ", ".join(sorted(ref)) if isinstance(ref, dict) else ""
            raise AscRayError(
                f"unknown config key '{key}'",
                path=source,
                fix=f"check the spelling; valid keys here: {known}",
            )
        if isinstance(ref[k], dict) and key not in FREE_MAPS:
            if not isinstance(v, dict):
                raise AscRayError(
                    f"config key '{key}' must be a mapping",
                    path=source,
                    fix=f"write it as `{key}.<name>=value` or a nested YAML block",
                )
            _merge(base[k], v, ref[k], source, prefix=f"{key}.")
        else:
            base[k] = _check_value(key, v, ref[k], source)


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
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    # students.search.<dotted key> keeps its dotted inner key whole
    if parts[:2] == ["students", "search"] and len(parts) > 2:
        parts = parts[:2] + [".".join(parts[2:])]
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(
    profile: str = "full", config_file: str | Path | None = None, overrides: list[str] | None = None
) -> dict:
    """Merge profile, file and overrides; validate; return a plain nested dict."""
    if profile not in PROFILES:
        raise AscRayError(f"unknown profile '{profile}'", path="--profile", fix="use --profile full or smoke")
    ref = schema()
    cfg = copy.deepcopy(ref)
    if profile != "full":
        _merge(cfg, _read_yaml(CONFIG_DIR / f"{profile}.yaml"), ref, f"profile {profile}")
    if config_file:
        _merge(cfg, _read_yaml(Path(config_file)), ref, str(config_file))
    for item in overrides or []:
        _merge(cfg, _override_to_dict(item), ref, f"override {item}")
    _check_semantics(cfg)
    cfg["profile"] = profile
    return cfg


def _check_semantics(cfg: dict) -> None:
    from asc_ray.systems import (  # late import: systems imports nothing from here
        STUDENTS,
        TEACHERS,
        check_needs,
    )

    for group, valid in (("teachers", TEACHERS), ("students", STUDENTS)):
        for name in cfg[group]["systems"]:
            if name not in valid:
                raise AscRayError(
                    f"unknown {group[:-1]} '{name}' in {group}.systems",
                    path="config",
                    fix="choose from " + ", ".join(valid),
                )
    check_needs(list(cfg["teachers"]["systems"]) + list(cfg["students"]["systems"]))
    for group, name, amount in [
        (g, n, a) for g in ("teachers", "students") for n, a in cfg[g]["resources"].items()
    ]:
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
    if cfg["train"]["epochs"] < 0:
        raise AscRayError(
            f"train.epochs must be >= 0, got {cfg['train']['epochs']}",
            path="config",
            fix="e.g. train.epochs=1 (every model trains one epoch); 0 = each family's own epochs",
        )
    every = cfg["train"]["checkpoint_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise AscRayError(
            f"train.checkpoint_every must be a whole number of epochs >= 1, got {every!r}",
            path="config",
            fix="e.g. train.checkpoint_every=5 (1 = a checkpoint every epoch)",
        )
    if not 0.0 < cfg["data"]["holdout_fraction"] < 0.5:
        raise AscRayError(
            "data.holdout_fraction must be in (0, 0.5)", path="config", fix="e.g. data.holdout_fraction=0.1"
        )
    ref = schema()
    for key, values in cfg["students"]["search"].items():
        section, _, name = key.partition(".")
        if section not in ref or not isinstance(ref[section], dict) or name not in ref[section]:
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
            _check_value(key, v, ref[section][name], "students.search")
    if cfg["train"]["select"] == "last" and (cfg["students"]["search"] or cfg["students"]["num_samples"] > 1):
        raise AscRayError(
            "students.search / students.num_samples choose among trials on the validation holdout, but "
            "train.select=last trains without one",
            path="config",
            fix="add train.select=val (the smoke profile sets last)",
        )


def get(cfg: dict, dotted: str) -> Any:
    cur = cfg
    for p in dotted.split("."):
        cur = cur[p]
    return cur


def with_overrides(cfg: dict, flat: dict[str, Any]) -> dict:
    """A copy of cfg with dotted keys set (used for search-space trials)."""
    out = copy.deepcopy(cfg)
    for key, value in flat.items():
        *head, last = key.split(".")
        cur = out
        for p in head:
            cur = cur[p]
        cur[last] = value
    return out


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{'bcbl.epochs': 150, ...}: what MLflow gets as params."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(obj: Any) -> str:
    """Stable short hash of any JSON-able object (config subsets, data fingerprints)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
