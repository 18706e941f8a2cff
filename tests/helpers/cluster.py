"""Ray clusters on this machine, private to the test (or bench) that starts them: their own temp dir under a
short /tmp path (Ray's unix sockets live under it), free ports, and a stop that ends their own processes only
(never `ray stop`, which kills every Ray process on the machine, other people's included).

- `local_cluster(...)`: several nodes (Ray's own ray.cluster_utils.Cluster): a head with no CPUs, like
  cluster.yaml's, and worker nodes. A worker node may be started as `ray start` inside a private mount
  namespace in which some folders are empty (`hidden=`): a node that does not mount the shared storage there.
- `RayHead`: one `ray start --head` from the project's venv with the dashboard and job API and its own token,
  for `ray job submit`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from asc_ray.procs import free_port, session
from helpers.wait import http_status, wait_for, wait_for_http

VENV_BIN = Path(sys.executable).parent  # the venv that runs the tests: its `python` is the job's python


def stop_session(proc: subprocess.Popen, timeout: float = 60) -> list[int]:
    """Stop a `ray start --block` process started in its own session: SIGTERM (it shuts its node down), then
    SIGKILL to whatever of its session is left. Returns the pids that were left (should be none)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not session(proc.pid), 20, "the node's processes to exit")
    left = session(proc.pid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    return left


def unshare_available() -> str | None:
    """None when this process may start a program in a private mount namespace and mount a tmpfs there
    (root on Linux, util-linux unshare); else why not."""
    if not shutil.which("unshare"):
        return "no `unshare` command"
    probe = tempfile.mkdtemp(prefix="asc_unshare_")
    try:
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0"', probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.rmdir(probe)
    return None if r.returncode == 0 else f"unshare -m not permitted here: {r.stderr.strip()[:200]}"


# ------------------------------------------------------------------------------------ several nodes
@dataclass
class Node:
    node_id: str
    cache_dir: Path | None = None
    handle: object = None  # ray.cluster_utils node, or the `ray start` process of a namespaced node


@dataclass
class LocalCluster:
    cluster: object  # ray.cluster_utils.Cluster
    workers: list[Node]
    tmp: Path
    _external: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def remove(self, node: Node) -> None:
        """Lose that machine: every process of the node is killed (no graceful drain)."""
        self.cluster.remove_node(node.handle, allow_graceful=False)

    def driver_env(self, **extra: str) -> dict:
        """The environment of a job driver on this cluster (RAY_ADDRESS), the venv's tools first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ASC_RAY_CACHE_DIR")}
        env.update(
            RAY_ADDRESS=self.address,
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            PYTHONUNBUFFERED="1",
            RAY_DEDUP_LOGS="0",  # every worker line reaches the driver's log (no "[repeated 3x]")
        )
        env.update(extra)
        return env


def _node_ids(cluster) -> set[str]:
    return {n["NodeID"] for n in cluster.global_state.node_table() if n["Alive"]}


@contextlib.contextmanager
def local_cluster(workers: list[dict], prefix: str = "asc") -> Iterator[LocalCluster]:
    """A head with `CPU: 0` and one worker node per dict: `num_cpus`, `resources`, `cache_dir` (the node's own
    ASC_RAY_CACHE_DIR, as cluster.yaml gives each node its NVMe) and `hidden` (folders that are empty on that
    node: it runs in a private mount namespace with a tmpfs over each; needs `unshare_available()`)."""
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: Ray's unix sockets live under it
    (tmp / "ray").mkdir()
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = str(tmp)  # the cluster's address file stays in here, not /tmp/ray
    os.environ.pop("RAY_ADDRESS", None)
    c = Cluster(shutdown_at_exit=True)
    lc = LocalCluster(c, [], tmp)
    try:
        c.add_node(
            num_cpus=0,
            temp_dir=str(tmp / "ray"),
            gcs_server_port=free_port(),
            include_dashboard=False,
            dashboard_agent_listen_port=free_port(),
        )
        for spec in workers:
            cache = Path(spec["cache_dir"]) if spec.get("cache_dir") else None
            env = {"ASC_RAY_CACHE_DIR": str(cache)} if cache else {}
            if spec.get("hidden"):
                lc.workers.append(_namespaced_node(lc, spec, env))
            else:
                kw = {"num_cpus": spec.get("num_cpus", 1), "resources": spec.get("resources", {})}
                n = c.add_node(**kw, env_vars=env)
                lc.workers.append(Node(n.node_id, cache, n))
        wait_for(
            lambda: _node_ids(c) >= {lc.head_id, *(w.node_id for w in lc.workers)},
            60,
            "every node to join",
        )
        yield lc
    finally:
        for p in lc._external:
            stop_session(p)
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _namespaced_node(lc: LocalCluster, spec: dict, env: dict) -> Node:
    """A worker node started by `ray start` in a private mount namespace, with a tmpfs over each hidden folder:
    every process of that node sees those folders empty, as on a machine that does not mount them."""
    before = _node_ids(lc.cluster)
    mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(h))}" for h in spec["hidden"])
    ray_start = [
        str(VENV_BIN / "ray"),
        "start",
        f"--address={lc.address}",
        f"--num-cpus={spec.get('num_cpus', 1)}",
        f"--resources={json.dumps(spec.get('resources', {}))}",
        "--block",
        "--disable-usage-stats",
    ]
    log = lc.tmp / f"node{len(lc.workers)}.log"
    with open(log, "w") as fh:
        p = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *ray_start],
            env={**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    lc._external.append(p)
    new = wait_for(
        lambda: _node_ids(lc.cluster) - before, 120, "the namespaced node to join", p, log.read_text
    )
    (node_id,) = new
    return Node(node_id, Path(env["ASC_RAY_CACHE_DIR"]) if env else None, p)


# ------------------------------------------------------------------------------- one head, job API
class RayHead:
    """`ray start --head --block` with the dashboard and job API on 127.0.0.1 and token auth on."""

    def __init__(self, num_cpus: int = 2):
        self.tmp = Path(tempfile.mkdtemp(prefix="asc", dir="/tmp"))
        self.temp_dir = self.tmp / "r"
        self.token_path = self.tmp / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        self.token_path.chmod(0o600)
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.num_cpus = num_cpus
        self.log = self.tmp / "head.log"
        self.proc: subprocess.Popen | None = None

    def env(self, token: bool = True, **extra: str) -> dict:
        """Environment of a process that talks to this head (the head itself, `ray job ...` clients)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI"))
        }
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_TMPDIR"] = str(self.tmp)  # nothing of ours in /tmp/ray (ray_current_cluster stays untouched)
        if token:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        env.update(extra)
        return env

    def start(self, timeout: float = 180) -> RayHead:
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,
                start_new_session=True,
            )
        try:  # the job API answers once the head (dashboard + job manager) is up
            wait_for_http(f"{self.address}/api/jobs/", timeout, self.token(), self.proc, self.log.read_text)
        except AssertionError:
            self.stop()
            raise
        return self

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def auth_mode(self) -> str:
        return json.loads(http_status(f"{self.address}/api/authentication_mode")[1])["authentication_mode"]

    def ray(
        self, *args: str, token: bool = True, cwd: str | Path | None = None, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess:
        """`ray <args>` as a client of this head, with this head's token (or none, token=False)."""
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args],
            env=self.env(token, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )

    def session_dir(self) -> Path:
        return (self.temp_dir / "session_latest").resolve()

    def stop(self) -> list[int]:
        """Stop this head only; returns the pids of its session still alive afterwards (should be none)."""
        return [] if self.proc is None else stop_session(self.proc)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
