"""The private Ray APIs asc-ray uses, in one place, and the Ray releases they were read against.

None of these is public: a Ray release may rename or change any of them without notice. Each was checked
against the Ray source of the releases in CHECKED_ON; tests/pipeline/test_ray_private.py fails outside that
range, naming this module. Before widening it, read each use below against the new release.

- ray._private.ray_constants.ENABLE_RAY_CLUSTER, PROCESS_TYPE_RAYLET; ray._private.worker._global_node
  (runtime.py): a local Ray bound to loopback; the raylet's processes, reaped after the driver.
- ray.train.torch.config._set_torch_distributed_env_vars, _shutdown_torch, TorchConfigContextManager;
  ray.train._internal.utils.get_address_and_port, ray.train.v2._internal.util.TrainingFramework
  (process_group.py): Ray Train's process group, made only for several workers and listening on the node
  address, by a backend config that imports no torch.
- TorchTrainer._create_default_callbacks, ray.train.v2._internal.callbacks.DatasetsCallback and
  PlacementGroupCleanerCallback (teachers.py): the two per-fit actors a teacher does not need.
"""

from __future__ import annotations

from ray._private import ray_constants, worker
from ray.train._internal.utils import get_address_and_port
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.util import TrainingFramework

CHECKED_ON = ("2.60.0", "2.61")  # the Ray releases from the first up to (not including) the second


def set_torch_distributed_env_vars() -> None:
    """On a worker: RANK, WORLD_SIZE, LOCAL_RANK, ... as Ray's torch backend sets them (imports torch: this
    module does not, for Ray Train's controller)."""
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def shutdown_torch(destroy_process_group: bool) -> None:
    """On a worker: Ray's torch backend's shutdown (the process group destroyed, the CUDA cache emptied)."""
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


def torch_train_func_context():
    """Ray's TorchConfig.train_func_context (a GPU worker's CUDA device set before the train function). Read by
    the driver, which wraps the train function in it; the controller only passes that on, by reference."""
    from ray.train.torch.config import TorchConfigContextManager

    return TorchConfigContextManager


def global_node():
    """The Ray node this process started (None when it joined a cluster or started none)."""
    return worker._global_node


__all__ = [
    "CHECKED_ON",
    "DatasetsCallback",
    "PlacementGroupCleanerCallback",
    "TrainingFramework",
    "get_address_and_port",
    "global_node",
    "ray_constants",
    "set_torch_distributed_env_vars",
    "shutdown_torch",
    "torch_train_func_context",
]
