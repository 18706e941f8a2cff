"""Resume keys: what a unit's result depends on. A finished unit whose record carries the key it would have now
is reused; any change to what it reads (its config keys, its split's data, the keys of the units it learns
from) gives a new key and so a new training. Keys that only change speed are read by no system
(asc_ray.systems.System.reads), so changing them never retrains a model."""

from __future__ import annotations

from asc_ray.config import config_hash, flatten
from asc_ray.pipeline.graph import Unit
from asc_ray.systems import System, get_system
from asc_ray.train.pretrain import pretrain_key

# What the training code does, beside the config it reads: bump it when a change to the code changes what a unit
# trains into (a schedule, a seed's derivation), so that finished units of the older code are retrained, not
# reused. 2: SNTL's PaSST schedule, the students' shared seeds, no warm-up cap.
RECIPE = 2


def unit_config(cfg, system: System) -> dict:
    """The config keys this system reads (System.reads). `train.epochs` is left out while it is off (0), so
    that units trained before the key existed keep their resume keys."""
    return {k: v for k, v in flatten(cfg).items() if system.reads(k) and (k, v) != ("train.epochs", 0)}


def unit_key(
    cfg, system: System, split: int, data_key: str, upstream: str = "", seed: int | None = None
) -> str:
    """What a trained model depends on: the config keys it reads, the data, its inputs' keys, the training code
    (RECIPE) and, for a student, its seed. A student's search space and replica count pick its model too."""
    parts = unit_config(cfg, system)
    if system.role == "student":
        parts["search"] = {k: v for k, v in cfg.students.search.items() if system.reads(k)}
        parts["num_samples"] = cfg.students.num_samples
        parts["unit_seed"] = seed
    return config_hash([parts, system.name, split, data_key, upstream, RECIPE])


class Keys:
    """The key of every unit of a graph, computed once: a table's from the keys of the models it holds, a
    system's from unit_key with its inputs' keys as `upstream`."""

    def __init__(self, graph: dict[Unit, list[Unit]], cfg, data_keys: dict[int, str]):
        self.graph, self.cfg, self.data_keys = graph, cfg, data_keys
        self._keys: dict[Unit, str] = {}

    def __getitem__(self, u: Unit) -> str:
        if u not in self._keys:
            upstream = config_hash([self[d] for d in self.graph[u]])
            if u.kind == "table":
                self._keys[u] = config_hash([u.name, u.split, upstream])
            elif u.kind == "pretrain":
                self._keys[u] = pretrain_key(self.cfg, u.model)
            else:
                s = get_system(u.system)
                self._keys[u] = unit_key(self.cfg, s, u.split, self.data_keys[u.split], upstream, u.seed)
        return self._keys[u]

    def of_inputs(self, u: Unit) -> dict[str, str]:
        """model -> key of the units a table holds."""
        return {d.system: self[d] for d in self.graph[u]}
