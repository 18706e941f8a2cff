"""Pre-flight: everything that can be checked before expensive work (data, audio, caches, impulse responses,
PaSST weights, MLflow), done once on the driver. It returns a `Context` that the rest of the run reads.

Each check fails with one AscRayError naming the file and the fix, before any unit starts (and, on one
machine, before Ray starts). Joining a cluster (RAY_ADDRESS), it first checks that every node sees the output
dir and the MLflow store (pipeline/storage.py): seconds, before the minutes of decoding.

The waveform caches are built here, once (which also reads every audio file: a bad one stops the run now).
Units get a `CacheRef` per sample rate: on a cluster the caches lie in `<output-dir>/cache` on shared storage
and each node copies the ones it needs to its own disk once (`data.cache_dir`, else the node's
$ASC_RAY_CACHE_DIR or temp dir); on one machine units read the pre-flight build itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from asc_ray.config import config_hash
from asc_ray.console import log
from asc_ray.data.cache import CacheRef, build_cache, cache_file_list, cache_keys
from asc_ray.data.irs import load_irs
from asc_ray.data.tau import EvalSet, TauDataset
from asc_ray.errors import AscRayError
from asc_ray.features import frontend_sample_rate
from asc_ray.mlflow_store import STORE_FILE
from asc_ray.models.passt import check_checkpoint, find_checkpoint
from asc_ray.pipeline.inputs import check_inputs, run_store
from asc_ray.pipeline.runtime import init_ray, joining_cluster
from asc_ray.pipeline.storage import (
    SERVER_FIX,
    SharedFolder,
    check_nodes,
    on_other_nodes,
    refuse_job_working_dir,
    this_node,
    write_tokens,
)
from asc_ray.systems import get_system
from asc_ray.tracking import (
    SPOOL_DIR,
    Tracker,
    check_tracking,
    default_artifact_location,
    local_artifact_path,
    sqlite_path,
)
from asc_ray.train import Paths


@dataclass
class Context:
    """What a pipeline run knows after pre-flight (plain data: it pickles to any node)."""

    paths: Paths  # paths.cache_dir: where pre-flight built the caches
    storage: str  # Ray Train/Tune results and checkpoints
    split_meta: dict[int, tuple[list[str], list[str], list[str]]]  # split -> (files, scene labels, devices)
    data_keys: dict[int, str]  # split -> hash of meta.csv, that split's file, test.csv and the cache content
    tracker: Tracker
    eval_set: EvalSet | None = None
    cluster: bool = False  # joined a Ray cluster (RAY_ADDRESS): nodes may not share this machine's disk
    caches: dict[int, CacheRef] = field(default_factory=dict)  # sample rate -> the dataset's cache
    eval_caches: dict[int, CacheRef] = field(default_factory=dict)  # sample rate -> the evaluation set's
    shared: list[SharedFolder] = field(default_factory=list)  # folders every node must see (cluster only)


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def preflight(
    cfg, data_dir: str | Path, output_dir: str | Path, splits: list[int], ds: TauDataset | None = None
) -> Context:
    """`ds`: the dataset check_inputs() opened (else opened here)."""
    data_dir, out = Path(data_dir).resolve(), Path(output_dir).resolve()
    cluster = joining_cluster()
    store = run_store(cfg, out)
    uri, experiment = store.uri, cfg.mlflow.experiment
    log(f"{store.line}, experiment '{experiment}'")
    check_tracking(uri)
    tracker = Tracker(uri, experiment, default_artifact_location(uri, experiment, out))
    tracker.set_spool(out / SPOOL_DIR)  # calls made while the server is down wait there
    shared = check_cluster_storage(cfg, out, tracker) if cluster else []

    ds = ds or check_inputs(cfg, data_dir, out, splits)
    split_meta = {}
    for s in sorted(splits):
        files = ds.split_files(s)
        split_meta[s] = (files, [ds.clips[f].scene_label for f in files], ds.devices(files))
    test = ds.test_files()
    log(
        f"data: {len(ds.clips)} clips in meta.csv; splits "
        + ", ".join(f"{s}%={len(split_meta[s][0])}" for s in sorted(splits))
        + f"; test {len(test)}"
    )
    systems = list(cfg.teachers.systems) + list(cfg.students.systems)
    paths = Paths.of(cfg, data_dir, out)
    # on a cluster: built on shared storage, copied by each node to its own disk (node_cache_dir() when
    # data.cache_dir is unset); on one machine: built where the units read it
    if cluster:
        paths, local = replace(paths, cache_dir=out / "cache"), cfg.data.cache_dir
    else:
        local = str(paths.cache_dir)
    files = cache_file_list(ds)
    rates = sorted(
        {frontend_sample_rate(get_system(n).frontend) for n in systems}
    )  # 44.1 kHz teachers, 32 students
    keys = cache_keys(ds, files, [0, *rates])  # one stat() per file, for every key of the run
    where = f"; each node copies what it needs to {local or 'its $ASC_RAY_CACHE_DIR (else its temp dir)'}"
    log(
        "waveform caches: "
        + ", ".join(f"{r / 1000:g} kHz" for r in rates)
        + f" in {paths.cache_dir}"
        + (where if cluster else "")
    )
    caches = {}
    for rate in rates:  # decodes every file once
        store = build_cache(ds, files, rate, paths.cache_dir, progress=True, key=keys[rate])
        caches[rate] = CacheRef(store.path.name, str(paths.cache_dir), local)
    eval_set, eval_caches = None, {}
    if cfg.data.eval_dir:
        eval_set = EvalSet(cfg.data.eval_dir)
        eval_rates = sorted({frontend_sample_rate(get_system(n).frontend) for n in cfg.students.systems})
        eval_keys = cache_keys(eval_set, eval_set.files, eval_rates)
        for rate in eval_rates:
            store = build_cache(
                eval_set, eval_set.files, rate, paths.cache_dir, progress=True, key=eval_keys[rate]
            )
            eval_caches[rate] = CacheRef(store.path.name, str(paths.cache_dir), local)
        log(f"evaluation set: {len(eval_set.files)} clips from {eval_set.root}")
    if any(get_system(n).dir for n in systems):
        irs = load_irs(paths.irs_dir, 32000)
        log(f"device impulse responses: {len(irs)} from {paths.irs_dir}")
    if any(get_system(n).model == "passt" for n in systems) and cfg.passt.pretrained:
        log(f"PaSST AudioSet weights: {passt_checkpoint_here()}")
        if cluster:  # each node reads its own disk: every node a teacher may land on, before any trains
            check_passt_on_nodes()
    # a unit's data key covers what it reads: meta.csv, its own split file, test.csv and the decoded audio
    # (never the set of splits requested, so `--splits 100` then `--splits 50,100` reuses split 100)
    common = [_digest(data_dir / "meta.csv"), _digest(ds.split_path("test.csv")), keys[0]]
    data_keys = {s: config_hash([*common, _digest(ds.split_path(f"split{s}.csv"))]) for s in splits}
    return Context(
        paths=paths,
        storage=cfg.storage_path or str(out / "ray_results"),
        split_meta=split_meta,
        data_keys=data_keys,
        tracker=tracker,
        eval_set=eval_set,
        cluster=cluster,
        caches=caches,
        eval_caches=eval_caches,
        shared=shared,
    )


MOUNT_FIX = (
    "put it on storage that every node mounts at the same path (cluster.yaml mounts EFS at /mnt/efs on "
    "each node), e.g. --output-dir /mnt/efs/asc-ray/outputs"
)


def cluster_folders(cfg, out: Path, uri: str, artifact_root: str | None) -> list[tuple[Path, str, str, str]]:
    """What every node of a cluster must see: (folder, what, why, the fix), the output dir first."""
    folders = [
        (
            out,
            "the output dir",
            "units on that node would write their results where nobody reads them",
            MOUNT_FIX,
        )
    ]
    db = sqlite_path(uri)
    if db is not None:
        folders.append(
            (
                db.parent,
                "the MLflow SQLite store's folder",
                f"workers there would each write an {db.name} of their own",
                f"{SERVER_FIX}; or put the database on shared storage, e.g. unset MLFLOW_TRACKING_URI "
                f"to use the output dir's {out / STORE_FILE}",
            )
        )
    art = local_artifact_path(artifact_root)
    if art is not None:
        folders.append(
            (
                art,
                f"the artifact location of MLflow experiment '{cfg.mlflow.experiment}'",
                "artifacts logged there would stay on that node's disk",
                "serve artifacts through an MLflow server (scripts/mlflow_server.sh: --serve-artifacts) or "
                "use an object store (s3://...); an experiment created by an earlier asc-ray run keeps its "
                "location: log to a new one with mlflow.experiment=<name>",
            )
        )
    storage = cfg.storage_path
    if storage and "://" not in storage:
        folders.append(
            (
                Path(storage).resolve(),
                "storage_path",
                "Ray Train/Tune checkpoints written there could not be resumed on another node",
                "set storage_path to shared storage (e.g. storage_path=/mnt/efs/asc-ray/ray_results) or "
                "s3://<bucket>/<prefix>",
            )
        )
    seen, unique = set(), []
    for f in folders:  # e.g. the database in the output dir: one check
        if f[0] not in seen:
            seen.add(f[0])
            unique.append(f)
    return unique


def check_cluster_storage(cfg, out: Path, tracker: Tracker) -> list[SharedFolder]:
    """Join the cluster and check that every node that is up sees the folders of cluster_folders()."""
    folders = cluster_folders(cfg, out, tracker.uri, None)
    refuse_job_working_dir(folders)  # before anything is created there
    init_ray()  # joins the cluster (seconds): the pipeline's own start later finds it joined
    folders = cluster_folders(cfg, out, tracker.uri, tracker.artifact_root())  # (creates the experiment)
    refuse_job_working_dir(folders)
    shared = write_tokens(out, folders)
    check_nodes(shared, log)
    return shared


NOT_ON_NODE = "PaSST checkpoint not usable on node {node}: {problem}"  # a node that lacks it, or a broken one


def passt_checkpoint_here(load: bool = True) -> str:
    """The PaSST checkpoint on this node, found and (`load`) loaded into PaSST-S: its path, or one AscRayError
    that names the node."""
    try:
        return str(check_checkpoint() if load else find_checkpoint())
    except AscRayError as e:
        raise AscRayError(
            NOT_ON_NODE.format(node=this_node(), problem=e.problem), path=e.path, fix=e.fix
        ) from None


def check_passt_on_nodes() -> None:
    """The PaSST checkpoint found and loaded on every other node that is up (a node that joins later checks
    when its first PaSST teacher starts: asc_ray.pipeline.unit)."""
    answers, late = on_other_nodes(_passt_task)
    for error in answers:
        if error is not None:
            raise error
    log(
        f"PaSST AudioSet weights: loaded on {len(answers)} other node(s)"
        + (f", {late} did not answer" if late else "")
    )


def _passt_task() -> AscRayError | None:
    try:
        passt_checkpoint_here()
    except AscRayError as e:
        return e
    return None
