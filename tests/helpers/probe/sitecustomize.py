"""A test probe, imported at start-up by every Python process that has this folder on its PYTHONPATH: a CLI
run the test starts and every Ray worker of it (they inherit the driver's environment). It does nothing unless
the test set one of its variables:

ASC_RAY_PROBE_DIR=DIR       when asc_ray.train.trainer is imported, its Trainer is wrapped: each training batch's
                            files (batch["index"] into trainer.batches.files) are recorded, and when fit()
                            returns, DIR/<system>_split<N>_rank<R>.json gets the rank, world size, the files it
                            trained on, its batch size, a digest of its parameters and its history.
ASC_RAY_PROBE_MODULES=FILE  at exit, FILE gets the names of the modules the process had imported.

Nothing of this is in the package: the probe wraps its public methods from the outside.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import sys

TARGET = "asc_ray.train.trainer"


def _instrument(module) -> None:
    import hashlib

    Trainer = module.Trainer
    prepare_inputs, fit = Trainer.prepare_inputs, Trainer.fit

    def recording_prepare_inputs(self, batch, *args, **kwargs):
        seen = self.__dict__.setdefault("_probe_files", [])
        seen.extend(self.batches.files[i] for i in batch["index"].tolist())
        return prepare_inputs(self, batch, *args, **kwargs)

    def recording_fit(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        digest = hashlib.sha256()
        for name, p in sorted(self.model.named_parameters()):
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        record = {
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batches.batch_size,
            "files": sorted(set(self.__dict__.get("_probe_files", []))),
            "parameters": digest.hexdigest(),
            "history": self.history,
        }
        path = os.path.join(
            os.environ["ASC_RAY_PROBE_DIR"], f"{self.system.name}_split{self.split}_rank{self.rank}.json"
        )
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, default=float)
        os.replace(path + ".tmp", path)
        return result

    Trainer.prepare_inputs, Trainer.fit = recording_prepare_inputs, recording_fit


class _InstrumentOnImport(importlib.abc.MetaPathFinder):
    """Finds asc_ray.train.trainer as usual and instruments the module once it has run."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _instrument(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("ASC_RAY_PROBE_DIR"):
    sys.meta_path.insert(0, _InstrumentOnImport())

if os.environ.get("ASC_RAY_PROBE_MODULES"):

    def _write_modules(path=os.environ["ASC_RAY_PROBE_MODULES"]):
        with open(path, "w") as f:
            f.write("\n".join(sorted(sys.modules)))

    atexit.register(_write_modules)
