"""Nothing local-only on a cluster, the pure parts (no Ray): which folders every node must see, the tokens that
prove it, where MLflow artifacts go, and what pre-flight hands the units. The checks across real Ray nodes are
in tests/cluster/test_shared_storage.py (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asc_ray.config import load_config
from asc_ray.errors import AscRayError
from asc_ray.mlflow_store import FROM_CONFIG, FROM_ENV, FROM_OUTPUT_DIR, STORE_FILE, Store
from asc_ray.pipeline import preflight as pf
from asc_ray.pipeline import storage
from asc_ray.tracking import Tracker, default_artifact_location, local_artifact_path


def _cfg(*overrides):
    return load_config(
        "smoke", None, ["teachers.systems=[bcbl32_fms]", "students.systems=[baseline]", *overrides]
    )


def test_every_local_store_of_a_cluster_run_must_be_shared(tmp_path):
    out, db = tmp_path / "out", tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    art = default_artifact_location(uri, "asc-ray", out)
    folders = pf.cluster_folders(_cfg("storage_path=/x/ray_results"), out, uri, art)
    assert [f[0] for f in folders] == [
        out,
        db.parent,
        db.parent / "mlartifacts" / "asc-ray",
        Path("/x/ray_results"),
    ]
    assert "mlflow server" in folders[1][3] or "mlflow_server.sh" in folders[1][3]
    assert "MLFLOW_TRACKING_URI=http" in folders[1][3]

    # a tracking server with its own artifact store and S3 checkpoints: only the output dir is left to check
    remote = pf.cluster_folders(
        _cfg("storage_path=s3://b/p"), out, "http://10.0.0.1:5000", "mlflow-artifacts:/1"
    )
    assert [f[0] for f in remote] == [out]
    # a database in the output dir is checked once
    inside = pf.cluster_folders(_cfg(), out, f"sqlite:///{out / 'mlflow.db'}", "s3://b/a")
    assert [f[0] for f in inside] == [out]


def test_artifacts_go_beside_the_database_or_under_the_output_dir(tmp_path):
    out = tmp_path / "out"
    assert default_artifact_location(f"sqlite:///{tmp_path}/m.db", "asc-ray", out) == (
        (tmp_path / "mlartifacts" / "asc-ray").as_uri()
    )
    pg = default_artifact_location("postgresql://u@h/db", "asc-ray", out)
    assert pg == (out / "mlartifacts" / "asc-ray").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000", "asc-ray", out) is None  # the server decides
    odd = default_artifact_location(f"sqlite:///{tmp_path}/m.db", "my runs/1", out)
    assert "/mlartifacts/my_runs_1-" in odd  # one folder per name, whatever its characters

    assert local_artifact_path((tmp_path / "a b").as_uri()) == tmp_path / "a b"
    assert local_artifact_path(str(tmp_path / "x")) == tmp_path / "x"
    for remote in ("s3://b/k", "mlflow-artifacts:/0", "gs://b", "dbfs:/x", None):
        assert local_artifact_path(remote) is None


def test_a_run_started_from_another_directory_writes_no_mlruns_there(tmp_path, monkeypatch):
    """MLflow's own default would put the experiment's artifacts in ./mlruns of the creating process."""
    elsewhere, store = tmp_path / "elsewhere", tmp_path / "store"
    elsewhere.mkdir()
    store.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    t = Tracker(uri, "asc-ray", default_artifact_location(uri, "asc-ray", tmp_path / "out"))
    run = t.start_run("unit")
    (tmp_path / "results.csv").write_text("a,b\n")
    t.log_artifacts(run, [tmp_path / "results.csv"])
    t.finish(run)
    assert not (elsewhere / "mlruns").exists()
    assert t.artifact_root() == (store / "mlartifacts" / "asc-ray").as_uri()
    assert (store / "mlartifacts" / "asc-ray" / run / "artifacts" / "results.csv").is_file()


def test_tokens_prove_a_folder_is_the_same_and_a_unit_checks_them(tmp_path, monkeypatch):
    out = tmp_path / "out"
    shared = storage.write_tokens(out, [(out, "the output dir", "units would write elsewhere", "mount it")])
    assert storage.unseen(shared) == []
    storage.verify_on_this_node(shared)

    # a node that does not see the folder reads no token there (not mounted: the folder is empty) ...
    token = Path(shared[0].token_file)
    kept = token.read_text()
    token.unlink()
    assert storage.unseen(shared) == shared
    with pytest.raises(AscRayError) as e:
        storage.verify_on_this_node(shared)
    assert "the output dir" in str(e.value) and e.value.path == str(out) and e.value.fix == "mount it"
    token.write_text(kept)
    assert storage.unseen(shared) == []
    # ... or another run's token (another disk mounted at that path)
    storage.write_tokens(out, [(out, "the output dir", "", "mount it")])  # a later run's fresh token
    assert storage.unseen(shared) == shared

    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(AscRayError) as e:
        storage.write_tokens(out, [(blocked / "sub", "storage_path", "", "use shared storage")])
    assert e.value.path == str(blocked / "sub") and e.value.fix == "use shared storage"
    assert "storage_path" in str(e.value)


def test_joining_a_cluster_is_an_address_that_is_not_our_own_local_ray(monkeypatch):
    from asc_ray.pipeline import runtime

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not runtime.joining_cluster()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert runtime.joining_cluster()
    monkeypatch.setattr(runtime, "_OWN_ADDRESS", ["10.0.0.1:6379"])  # the local Ray this process started
    assert not runtime.joining_cluster()


def test_on_a_cluster_storage_is_checked_before_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "joining_cluster", lambda: True)

    def refuse(cfg, out, tracker):
        raise AscRayError("the output dir is not shared", path=out, fix="mount it")

    monkeypatch.setattr(pf, "check_cluster_storage", refuse)
    cfg = _cfg(f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(AscRayError) as e:  # not "data dir not found": the cluster comes first
        pf.preflight(cfg, tmp_path / "no-such-data", tmp_path / "out", [25])
    assert e.value.fix == "mount it"


def test_on_a_cluster_the_units_copy_preflights_shared_cache(synth_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "joining_cluster", lambda: True)
    monkeypatch.setattr(pf, "check_cluster_storage", lambda cfg, out, tracker: [])
    out = tmp_path / "out"
    cfg = _cfg(f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    ctx = pf.preflight(cfg, synth_dataset, out, [25])
    assert ctx.cluster and sorted(ctx.caches) == [32000, 44100]  # baseline hears 32 kHz, bcbl32 44.1 kHz
    for rate, ref in ctx.caches.items():
        assert ref.shared_dir == str(out / "cache") and ref.name.startswith(f"{rate}_")
        assert (out / "cache" / ref.name / "COMPLETE").is_file()
        assert ref.local_dir is None  # data.cache_dir unset: each node's own default folder

    # one machine: the units read the build itself (data.cache_dir, else <output-dir>/cache)
    monkeypatch.setattr(pf, "joining_cluster", lambda: False)
    local = pf.preflight(
        _cfg(f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"), synth_dataset, out, [25]
    )
    assert {r.local_dir for r in local.caches.values()} == {str(out / "cache")}
    assert local.data_keys == ctx.data_keys  # the same data, the same resume keys


def test_a_store_inside_the_jobs_temporary_working_dir_is_refused_at_once(tmp_path, monkeypatch):
    """Under `ray job submit --working-dir .` the driver runs in a copy that is deleted with the job: a relative
    --output-dir (and the MLflow store in it) or sqlite path would land there."""
    wd = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    wd.mkdir(parents=True)
    monkeypatch.chdir(wd)
    folders = pf.cluster_folders(_cfg(), tmp_path / "out", f"sqlite:///{wd / 'mlflow.db'}", None)
    storage.refuse_job_working_dir(folders)  # not under a job: nothing to say
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}'
    )
    with pytest.raises(AscRayError) as e:
        storage.refuse_job_working_dir(folders)
    assert e.value.path == str(wd) and "MLflow" in str(e.value)  # the folder, what it is
    assert "MLFLOW_TRACKING_URI=http" in e.value.fix


def test_the_store_is_the_output_dirs_unless_one_is_named(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert pf.run_store(_cfg(), out) == Store(f"sqlite:///{out / STORE_FILE}", FROM_OUTPUT_DIR)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")  # relative: made absolute for every process
    assert pf.run_store(_cfg(), out) == Store(f"sqlite:///{Path.cwd() / 'rel.db'}", FROM_ENV)
    named = _cfg("mlflow.tracking_uri=http://10.0.1.23:5000")  # the config wins over the environment
    assert pf.run_store(named, out) == Store("http://10.0.1.23:5000", FROM_CONFIG)


def test_a_run_logs_to_its_output_dirs_store_and_says_so(synth_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    out = tmp_path / "out"
    out.mkdir()  # as the run's output-dir lock makes it
    ctx = pf.preflight(_cfg(), synth_dataset, out, [25])
    store = Store(f"sqlite:///{out / STORE_FILE}", FROM_OUTPUT_DIR)
    assert ctx.tracker.uri == store.uri and (out / STORE_FILE).is_file()
    assert store.line in capsys.readouterr().out
