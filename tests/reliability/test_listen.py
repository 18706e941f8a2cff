"""What listens where inside a Ray Train teacher (slow: a real local Ray and real TorchTrainer fits with the
pipeline's own trainer config). One worker: no process group, so no torch store listens at all. Two workers
(DDP): the process group works, and its TCPStore listens on the node address (127.0.0.1 for the local Ray),
not on all interfaces."""

from __future__ import annotations

import json
import os

import pytest
from helpers.procs import ROOT, cli_env, run_py

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CODE = """
import json, os
import ray, ray.train
from ray.train.torch import TorchTrainer
from asc_ray.pipeline.runtime import init_ray
from asc_ray.pipeline.process_group import PrivateTorchConfig

def fn(cfg):
    import torch, torch.distributed as dist
    from helpers.procs import listening_sockets  # the workers have the tests folder on PYTHONPATH
    pg = dist.is_initialized()
    total = None
    if pg:
        t = torch.ones(1)
        dist.all_reduce(t)
        total = float(t)
        dist.barrier()  # every rank has its sockets open when rank 0 looks
    socks = listening_sockets({os.getpid()})
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(cfg["out"], f"listen{cfg['n']}_rank{rank}.json"), "w") as f:
        json.dump({"pg": pg, "total": total, "socks": socks}, f)

init_ray()
out = {}
for n in (1, 2):
    TorchTrainer(fn, torch_config=PrivateTorchConfig(), train_loop_config={"out": %r, "n": n},
                     scaling_config=ray.train.ScalingConfig(num_workers=n, resources_per_worker={"CPU": 0.5}),
                     run_config=ray.train.RunConfig(name=f"listen{n}", storage_path=%r)).fit()
ray.shutdown()
print("RESULT done")
"""


def test_teacher_workers_listen_on_the_node_address_only(tmp_path):
    code = CODE % (str(tmp_path), str(tmp_path / "ray_results"))
    env = cli_env(f"sqlite:///{tmp_path}/m.db", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    r = run_py(["-c", code], env, tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "RESULT done" in r.stdout, r.stdout[-2000:]
    got = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("listen*_rank*.json")}
    assert sorted(got) == ["listen1_rank0", "listen2_rank0", "listen2_rank1"], got
    assert got["listen1_rank0"]["pg"] is False  # one worker: no process group
    assert got["listen2_rank0"]["pg"] is True and got["listen2_rank0"]["total"] == 2.0  # DDP works
    for name, m in got.items():
        assert all(ip in ("127.0.0.1", "::1") for _, ip, _ in m["socks"]), (name, m["socks"])
    # the store is there (rank 0 listens on more sockets than a lone worker), on loopback only
    assert len(got["listen2_rank0"]["socks"]) > len(got["listen1_rank0"]["socks"]), got
