"""The Ray touchpoints of the driver: start or join Ray, see whether it has GPUs, and leave no Ray process
behind when a run is interrupted."""

from __future__ import annotations

import json
import logging
import os
import subprocess

import ray

from asc_ray.console import LEAVE_HOOKS, handle_sigterm
from asc_ray.pipeline.ray_private import global_node, ray_constants
from asc_ray.procs import children, free_port

# Workers' and actors' output (Ray Train's per-report dumps, its placement-group cleaner's warnings, per-epoch
# lines) stays in Ray's log files (/tmp/ray/session_latest/logs): the console is asc-ray's unit lines. Errors
# still reach the driver as exceptions and are printed by the scheduler. ASC_RAY_WORKER_LOGS=1 shows them.
QUIET_WORKERS = os.environ.get("ASC_RAY_WORKER_LOGS") != "1"


def quiet_ray_driver() -> None:
    """Ray Tune's driver-side chatter (experiment banners, TensorBoard hints, per-trial loggers, snapshot
    warnings) off; its warnings and errors stay."""

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0: no banners
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # figures go to MLflow, not TensorBoard
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune prints each trial failure as a traceback, retried ones too: students.TrialRetried says a retry in
    # one line, and a trial out of retries is its unit's failure (the scheduler prints it)
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # with those loggers off, every ResultGrid warns "Failed to fetch metrics ... result.json and progress.csv
    # were not found" per trial: expected, the trial's figures are in MLflow and its own result.json
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


_OWN_ADDRESS: list[str] = []  # the RAY_ADDRESS this process set for the local Ray it started


def pin_local_ray_address() -> str:
    """Two runs on one machine each start a local Ray; Ray code that looks up "the" cluster without an
    address (Ray Train V2's PlacementGroupCleaner actor calls the state API with address=None) then scans the
    machine's processes, finds two GCS servers and fails with `ConnectionError: Found multiple active Ray
    instances`. So each run picks its GCS port itself and sets RAY_ADDRESS to it before starting Ray: the
    GCS and raylet inherit the environment, every worker of this run with them, and each looks up its own
    instance only. (init(address="local") ignores RAY_ADDRESS: it still starts a new instance.)"""
    address = f"127.0.0.1:{free_port()}"
    os.environ["RAY_GCS_SERVER_PORT"] = address.rsplit(":", 1)[1]
    os.environ["RAY_ADDRESS"] = address
    # with a chosen GCS port Ray skips its 120 s wait for the GCS to come up (~20 s instead): keep 120 s,
    # a loaded laptop needs it
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    _OWN_ADDRESS[:] = [address]
    return address


def joining_cluster() -> bool:
    """Whether init_ray() joins a Ray cluster (RAY_ADDRESS set, and not the local Ray this process started),
    where other nodes may not see this machine's disk."""
    address = os.environ.get("RAY_ADDRESS")
    return bool(address) and not (_OWN_ADDRESS and address == _OWN_ADDRESS[0])


def own_local_ray() -> bool:
    """Whether Ray here is the local Ray init_ray() started (no dashboard, this machine only)."""
    return bool(_OWN_ADDRESS) and ray.is_initialized() and not joining_cluster()


def init_ray() -> None:
    """Join the cluster when RAY_ADDRESS is set (e.g. under `ray job submit`), else start a local Ray."""
    if ray.is_initialized():
        return
    if QUIET_WORKERS:
        quiet_ray_driver()
    if _OWN_ADDRESS and os.environ.get("RAY_ADDRESS") == _OWN_ADDRESS[0]:
        del os.environ["RAY_ADDRESS"]  # our own earlier local Ray (shut down since): start a new one
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # env vars that `ray job submit --runtime-env-json` already gives every worker are left out: Ray refuses
    # a ray.init() runtime env that names the job's own env vars again ("Failed to merge the Job's runtime env")
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    env = {
        "env_vars": {
            k: os.environ[k]
            for k in ("MLFLOW_TRACKING_URI", "ASC_RAY_PASST_CHECKPOINT")
            if k in os.environ and k not in (job_env.get("env_vars") or {})
        }
    }
    if os.environ.get("RAY_ADDRESS"):
        ray.init(namespace="asc_ray", runtime_env=env, log_to_driver=not QUIET_WORKERS)
    else:
        # a laptop: a private local Ray, reachable from this machine only: with node IP 127.0.0.1 every Ray
        # server binds to loopback (Ray maps "127.0.0.1" to the routable IP unless ENABLE_RAY_CLUSTER is off).
        # Set before ray.init, so that the raylet and every worker inherit them: no Ray Train metrics (no
        # dashboard to show them), no preemption watcher (no spot nodes), and a 0.5-s controller poll, since a
        # report waits for the previous one to be taken and a 2-s poll caps a teacher at an epoch per 2 s.
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        pin_local_ray_address()
        try:
            ray.init(
                address="local",
                num_cpus=os.cpu_count(),
                namespace="asc_ray",
                runtime_env=env,
                dashboard_host="127.0.0.1",
                include_dashboard=False,
                log_to_driver=not QUIET_WORKERS,
                _node_ip_address="127.0.0.1",
            )
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    handle_sigterm()  # ray.init() installed its own SIGTERM handler (abort, no cleanup): a stop keeps finished work
    if stop_own_ray_node not in LEAVE_HOOKS:
        LEAVE_HOOKS.append(stop_own_ray_node)


def unit_resources(cfg, role: str, use_gpu: bool, data_parallel: bool = False) -> dict[str, float]:
    """What one process of a unit asks Ray for: a teacher's Train worker teachers.cpus/gpus_per_worker; a
    student's Tune trial (or evaluation-set task) students.cpus/gpus_per_trial, a data-parallel student's Train
    worker students.cpus_per_trial and a whole GPU (workers on fractions could share one GPU, not add GPUs);
    each with its role's custom resources (teachers/students.resources)."""
    t, s = cfg.teachers, cfg.students
    if role == "teacher":
        cpus, gpus, extra = t.cpus_per_worker, t.gpus_per_worker, t.resources
    else:
        cpus, gpus, extra = s.cpus_per_trial, 1.0 if data_parallel else s.gpus_per_trial, s.resources
    resources = {"CPU": cpus, **({"GPU": gpus} if use_gpu else {})}
    resources.update({k: float(v) for k, v in extra.items()})  # e.g. a node type's custom resource
    return resources


def detect_gpu(cfg) -> bool:
    v = cfg.use_gpu
    if v != "auto":
        return bool(v)
    return ray.cluster_resources().get("GPU", 0) > 0


def stop_own_ray_node() -> None:
    """Leave a reaper for the processes of the raylet this driver started (none when it joined a cluster). The
    raylet and GCS share the driver's fate, but the raylet's dashboard and runtime-env agents then spend minutes
    trying to report its death to a GCS that died too. Stopping the raylet from here instead (SIGTERM, as
    `ray.shutdown()` does) races with Ray's core worker, which ends this process with status 1 when it sees the
    raylet go. So a detached shell waits for this process to be gone, then kills what the raylet had started."""
    node = global_node()
    raylets = [
        proc.pid
        for kind, proc in (node.live_processes() if node is not None else [])
        if kind == ray_constants.PROCESS_TYPE_RAYLET
    ]
    doomed = [pid for r in raylets for pid in children(r)]
    if doomed:
        subprocess.Popen(
            [
                "sh",
                "-c",
                f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.2; done; sleep 1; "
                f"kill -9 {' '.join(map(str, doomed))} 2>/dev/null",
            ],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
