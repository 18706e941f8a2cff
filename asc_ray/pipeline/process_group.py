"""A teacher's torch process group, in a module of its own that imports no torch: Ray Train's controller reads a
fit's backend config (PrivateTorchConfig) and runs its backend's start and shutdown, so whatever this module
imports, every teacher's controller process imports too (~2 CPU s for torch alone; tests/pipeline/
test_teachers.py). What needs torch runs on the workers, which import it anyway.

Ray Train's TorchConfig makes every worker group a torch process group, and torch's TCPStore server (rank 0)
listens on all interfaces on a random port. A single-worker teacher has nothing to rendezvous: no process
group at all. A multi-worker teacher gets its store bound to rank 0's node address (Ray's node IP: the
private address on a cluster, 127.0.0.1 for the local Ray), through a socket bound here and handed to torch.
Otherwise it is Ray's TorchConfig, calling Ray's own functions (imported where they run): the same fields, each
worker's CUDA device set before the train function, the process group destroyed and the CUDA cache emptied at
shutdown.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import (
    DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
    TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
)

from asc_ray.pipeline.ray_private import (
    TrainingFramework,
    get_address_and_port,
    ray_constants,
    shutdown_torch,
    torch_train_func_context,
)


def _private_process_group(
    backend: str, world_rank: int, world_size: int, addr: str, port: int, timeout_s: int
) -> None:
    import torch.distributed as dist

    from asc_ray.pipeline.ray_private import set_torch_distributed_env_vars

    set_torch_distributed_env_vars()
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    timeout = datetime.timedelta(seconds=timeout_s)
    rank, world = world_rank, world_size
    if rank == 0:
        sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(128)
        store = dist.TCPStore(addr, port, world, True, timeout=timeout, master_listen_fd=sock.fileno())
        _private_process_group.sock = sock  # the store serves on this socket: keep it open
    else:
        store = dist.TCPStore(addr, port, world, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


class _PrivateTorchBackend(Backend):
    share_cuda_visible_devices: bool = True  # as Ray's torch backend: a node's workers see each other's GPUs

    def on_start(self, worker_group, backend_config) -> None:
        if len(worker_group) == 1:
            return  # one worker: no process group, no store, nothing listens
        addr, port = worker_group.execute_single(0, get_address_and_port)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _private_process_group,
                    backend=backend_config.backend or "gloo",
                    world_rank=i,  # (not `rank`: execute_single_async's own first parameter)
                    world_size=len(worker_group),
                    addr=addr,
                    port=port,
                    timeout_s=backend_config.timeout_s,
                )
                for i in range(len(worker_group))
            ]
        )

    def on_shutdown(self, worker_group, backend_config) -> None:
        timeout = ray_constants.env_integer(
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        )
        try:
            futures = worker_group.execute_async(shutdown_torch, destroy_process_group=len(worker_group) > 1)
            ray.get(futures, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            pass  # as Ray's: a worker stuck in its shutdown does not hold up the fit's end


@dataclass
class PrivateTorchConfig(BackendConfig):
    """Ray's TorchConfig (ray.train.torch.TorchConfig: the same fields, which TorchTrainer fills in) whose process
    group exists only for several workers and listens on the node address, and which imports no torch."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _PrivateTorchBackend

    @property
    def train_func_context(self):
        return torch_train_func_context()

    @property
    def framework(self):
        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}
