"""Fixtures shared by every test folder: the synthetic dataset, an isolated environment and MLflow store per
test, a Trainer factory, a local Ray runtime and a local multi-node Ray cluster. Helpers that are not fixtures
(waiting on events, running the CLIs, the probe) live in tests/helpers."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

# never inherited from the person running the tests: a cluster address, a PaSST checkpoint, probe switches
FOREIGN_ENV = ("RAY_ADDRESS", "ASC_RAY_PASST_CHECKPOINT", "ASC_RAY_PROBE_DIR", "ASC_RAY_PROBE_MODULES")


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory):
    """For fixtures wider than a test: no cluster address, an MLflow store of the session's own."""
    saved = dict(os.environ)
    for k in FOREIGN_ENV:
        os.environ.pop(k, None)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def isolated(tmp_path, tmp_path_factory):
    """Each test gets its own environment, MLflow tracking URI (a SQLite store in its tmp_path), working
    directory (an empty temp dir: nothing lands in the checkout), sys.path and signal handlers: whatever a test
    sets (init_ray's RAY_ADDRESS, mlflow.set_tracking_uri, a path insert, run_cli's SIGTERM handler) ends with
    it."""
    env, path, cwd = dict(os.environ), list(sys.path), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(cwd)
    for s, h in handlers.items():
        signal.signal(s, h)
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)  # the process-wide URI mlflow.set_tracking_uri set
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the TAU22 layout (200 clips, 10 scenes, splits, test.csv, irs/).

    Shared by the whole session: treat it as read-only (copy it, or make your own with
    asc_ray.data.synth.generate, before changing files).
    """
    from asc_ray.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "tau", clips_per_class=20, seed=0)


@pytest.fixture(scope="session")
def reference(synth_dataset, tmp_path_factory):
    """The reference pipeline run (helpers.reference.Reference): `python jobs/full_pipeline.py --profile smoke`
    on the synthetic set, splits 10 and 100, every teacher and student, once per session. Read it; to run a
    command on it, work on `reference.copy(tmp_path)`."""
    from helpers.reference import run_reference

    return run_reference(synth_dataset, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One waveform cache folder for the session's Trainers (keyed by content: datasets never mix)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_trainer(synth_dataset, shared_cache, tmp_path):
    """Trainer factory (helpers.training.new_trainer): `make_trainer(system="baseline", split=100, overrides=(),
    out=None, data_dir=None, profile="smoke", logits=None, **Trainer kwargs)` -> a Trainer on the synthetic set
    (tiny settings before `overrides`), its unit folder `out` (default tmp_path/<system>), its log lines in
    `trainer.logs`; the session's waveform cache."""
    from helpers.training import new_trainer

    def make(system="baseline", split=100, overrides=(), out=None, data_dir=None, **kwargs):
        data_dir = data_dir or synth_dataset
        return new_trainer(
            data_dir, tmp_path, system, split, overrides, out, cache_dir=shared_cache, **kwargs
        )

    return make


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray runtime for the module's tests (2 CPUs, no dashboard), shut down after them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="asc_ray_test", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def no_ray():
    """For a test that starts Ray itself: none runs before it, none is left after it."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture
def local_cluster():
    """Factory of local multi-node Ray clusters (helpers.cluster.local_cluster: a head with no CPUs and a worker
    node per spec): `local_cluster([{"num_cpus": 1}, ...])`; each is shut down after the test. A module that
    shares one cluster between its tests uses helpers.cluster.local_cluster in a module fixture."""
    import contextlib

    from helpers.cluster import local_cluster as start

    with contextlib.ExitStack() as stack:
        yield lambda workers, prefix="asc": stack.enter_context(start(workers, prefix))
