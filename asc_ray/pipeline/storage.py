"""Nothing local-only on a cluster: the folders every node must see at the same path (the output dir, a
SQLite MLflow store's folder, a local MLflow artifact location, a local `storage_path`) are checked for real.

The driver writes a token (a fresh random value) into each folder; a task pinned to every other node that
is up reads it back. A node that reads something else, or nothing, does not see the driver's folder (it is not
mounted there, or a different disk is mounted at that path): pre-flight stops and says what to mount or what
to use instead. Nodes that join later (GPU nodes start on demand) make the same check when their first unit
starts (`verify_on_this_node`), before it writes anything.

On one machine (no RAY_ADDRESS) every process sees the same disk: nothing is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from asc_ray.errors import AscRayError
from asc_ray.io import atomic_write_text

TOKEN_PREFIX = ".asc-ray-shared"
CHECK_TIMEOUT_S = 120.0  # a node that cannot start a worker in this time is reported as not answering

SERVER_FIX = (
    "run an MLflow server that every node reaches (scripts/mlflow_server.sh; cluster.yaml starts one on the "
    "head) and set MLFLOW_TRACKING_URI=http://<its private address>:5000"
)


@dataclass(frozen=True)
class SharedFolder:
    """One folder that must be the same on every node: where its token lies, what it is, and the fix."""

    path: str
    what: str  # e.g. "the output dir"
    why: str  # what goes wrong when a node does not see it ("" when it goes without saying)
    fix: str
    token_file: str
    token: str


def _token_file(folder: Path, output_dir: Path) -> Path:
    # one token per (folder, output dir): a run owns its output dir (the output dir lock), so its tokens
    # never meet another run's, even in a folder that several runs share (an MLflow store's)
    tag = hashlib.sha256(str(output_dir).encode()).hexdigest()[:12]
    return folder / f"{TOKEN_PREFIX}-{tag}"


def job_working_dir() -> Path | None:
    """The temporary copy of `ray job submit --working-dir` that this driver runs in (its current directory),
    else None."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return Path.cwd().resolve() if (job.get("runtime_env") or {}).get("working_dir") else None


def refuse_job_working_dir(folders: list[tuple[Path, str, str, str]]) -> None:
    """A folder inside the job's working-dir copy (a relative --output-dir and the store in it, a relative
    sqlite path) is refused at once: the copy is deleted with the job, and each node unpacks its own."""
    wd = job_working_dir()
    for folder, what, _, fix in folders:
        if wd is not None and (Path(folder) == wd or wd in Path(folder).parents):
            raise AscRayError(
                f"{what} is inside the job's temporary working directory (ray job submit --working-dir): it "
                "is deleted with the job and every node has its own copy",
                path=folder,
                fix=f"use an absolute path outside it; {fix}",
            )


def write_tokens(output_dir: Path, folders: list[tuple[Path, str, str, str]]) -> list[SharedFolder]:
    """Write a fresh token into each (folder, what, why, fix); the folder is created when missing (MLflow
    would create an artifact folder at the first artifact anyway)."""
    out = []
    for folder, what, why, fix in folders:
        folder = Path(folder)
        token = f"{socket.gethostname()} {os.getpid()} {time.time():.0f} {secrets.token_hex(8)}"
        path = _token_file(folder, output_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, token)
        except OSError as e:
            raise AscRayError(f"{what} is not writable: {e.strerror}", path=folder, fix=fix) from None
        out.append(SharedFolder(str(folder), what, why, fix, str(path), token))
    return out


def read_token(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def unseen(folders: list[SharedFolder]) -> list[SharedFolder]:
    """The folders whose token this process does not read back."""
    return [f for f in folders if read_token(f.token_file) != f.token]


def _error(f: SharedFolder, node: str) -> AscRayError:
    why = f"; {f.why}" if f.why else ""
    return AscRayError(
        f"{f.what} is not shared: node {node} does not see the folder the driver wrote{why}",
        path=f.path,
        fix=f.fix,
    )


def this_node() -> str:
    if not ray.is_initialized():
        return socket.gethostname()
    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:12]})"


def verify_on_this_node(folders: list[SharedFolder]) -> None:
    """In a unit, before it reads or writes anything: the folders pre-flight checked are the same here."""
    missing = unseen(folders)
    if missing:
        raise _error(missing[0], this_node())


def _check_task(folders: list[SharedFolder]) -> tuple[str, list[int]]:
    missing = unseen(folders)
    return this_node(), [i for i, f in enumerate(folders) if f in missing]


def on_other_nodes(fn, *args) -> tuple[list, int]:
    """fn(*args) on every other node that is up, as a 0-CPU task pinned to it: (the answers of the nodes that
    answered within CHECK_TIMEOUT_S, how many did not). A node that went away meanwhile is left out: the units
    that land elsewhere check for themselves."""
    own = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != own]
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(*args)
        for n in nodes
    ]
    done, late = ray.wait(refs, num_returns=len(refs), timeout=CHECK_TIMEOUT_S) if refs else ([], [])
    answers = []
    for ref in done:
        try:
            answers.append(ray.get(ref))
        except ray.exceptions.RayError:
            continue
    for ref in late:
        ray.cancel(ref, force=True)
    return answers, len(late)


def check_nodes(folders: list[SharedFolder], log) -> None:
    """Each folder's token read back on every other node that is up."""
    names = ", ".join(f.what for f in folders)
    answers, late = on_other_nodes(_check_task, folders)
    if not answers and not late:
        log(f"shared storage: no other node is up yet; each node checks {names} when its first unit starts")
        return
    for node, missing in answers:
        if missing:
            raise _error(folders[missing[0]], node)
    if late:
        log(
            f"shared storage: {late} node(s) did not answer within {CHECK_TIMEOUT_S:.0f}s; their units check when they start"
        )
    log(f"shared storage: {names} seen by {len(answers)} other node(s)")
