"""The private Ray APIs (asc_ray.pipeline.ray_private) were read against a range of Ray releases: another Ray
fails here first, by name, before a pipeline fails somewhere inside Ray."""

from __future__ import annotations

import ray
from packaging.version import Version
from ray.train.torch import TorchTrainer

from asc_ray.pipeline import ray_private


def test_this_ray_is_one_the_private_apis_were_checked_on():
    first, past = ray_private.CHECKED_ON
    assert Version(first) <= Version(ray.__version__) < Version(past), (
        f"Ray {ray.__version__} is outside {first} <= Ray < {past}, the releases the private Ray APIs in "
        f"asc_ray/pipeline/ray_private.py were read against: read each use it lists against this Ray, then "
        f"widen CHECKED_ON"
    )


def test_the_private_names_are_there():
    """What an import would not show: the hook the teachers' trainer overrides, the constants it reads."""
    assert callable(getattr(TorchTrainer, "_create_default_callbacks", None))
    assert isinstance(ray_private.ray_constants.ENABLE_RAY_CLUSTER, bool)
    assert ray_private.ray_constants.PROCESS_TYPE_RAYLET
    assert callable(ray_private.TrainingFramework.TORCH.module_names)
    # imported where they run (a worker, the driver), not by the module: checked here instead
    from ray.train.torch import config as torch_config

    assert callable(torch_config._shutdown_torch) and callable(torch_config._set_torch_distributed_env_vars)
    assert hasattr(ray_private.torch_train_func_context(), "__enter__")
