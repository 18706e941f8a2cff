"""A teacher's torch process group, in a module of its own: Ray Train's controller reads a fit's backend config
(PrivateTorchConfig), so whatever this module imports, every teacher's controller process imports too. It
imports Ray Train's torch backend and nothing of asc-ray's training (tests/pipeline/test_teachers.py).

Ray Train's TorchConfig makes every worker group a torch process group, and torch's TCPStore server (rank 0)
listens on all interfaces on a random port. A single-worker teacher has nothing to rendezvous: no process
group at all. A multi-worker teacher gets its store bound to rank 0's node address (Ray's node IP: the
private address on a cluster, 127.0.0.1 for the local Ray), through a socket bound here and handed to torch.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig

from asc_ray.pipeline.ray_private import TorchBackend, get_address_and_port, set_torch_distributed_env_vars


def _private_process_group(
    backend: str, world_rank: int, world_size: int, addr: str, port: int, timeout_s: int
) -> None:
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


class _PrivateTorchBackend(TorchBackend):
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


@dataclass
class PrivateTorchConfig(TorchConfig):
    """TorchConfig whose process group exists only for several workers and listens on the node address."""

    @property
    def backend_cls(self):
        return _PrivateTorchBackend
