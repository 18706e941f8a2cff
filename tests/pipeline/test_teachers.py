"""What each teacher's TorchTrainer asks Ray for, built from the config (no cluster needed)."""

import pytest

from asc_ray.config import load_config
from asc_ray.pipeline.teachers import build_trainer
from asc_ray.pipeline.unit import UnitJob


def _job(cfg, system="passt_fms", split=25):
    return UnitJob(system, split, "0123456789abcdef", cfg, data_dir="D", output_dir="O", unit_dir="U")


def test_trainer_resources_names_and_failure_policy_come_from_the_config(tmp_path):
    cfg = load_config(
        "full",
        None,
        ["teachers.resources={large_gpu: 1}", "teachers.num_workers=2", "teachers.max_failures=5"],
    )
    t = build_trainer(_job(cfg), str(tmp_path), use_gpu=True)
    assert t.scaling_config.num_workers == 2 and t.scaling_config.use_gpu
    assert t.scaling_config.resources_per_worker == {"CPU": 1.0, "GPU": 1.0, "large_gpu": 1.0}
    assert t.run_config.failure_config.max_failures == 5
    assert t.run_config.name == "teacher-passt_fms-split25-01234567"  # stable: a re-run continues it
    cpu = build_trainer(_job(load_config("smoke")), str(tmp_path), use_gpu=False)
    assert cpu.scaling_config.resources_per_worker == {"CPU": 0.5}


def test_a_teacher_fit_starts_no_ray_data_actor(tmp_path):
    # teachers pass no datasets: Ray's DatasetsCallback would still start a DatasetManager actor per fit
    from asc_ray.pipeline.ray_private import DatasetsCallback

    job = _job(load_config("smoke"), "bcbl32_fms")
    callbacks = build_trainer(job, str(tmp_path), use_gpu=False)._create_default_callbacks()
    assert callbacks and not any(isinstance(c, DatasetsCallback) for c in callbacks)


@pytest.mark.slow
def test_a_teacher_on_the_local_ray_starts_no_placement_group_cleaner(tmp_path, monkeypatch, no_ray):
    # Ray Train's PlacementGroupCleaner asks the state API every second whether the controller lives; the local
    # Ray has no dashboard to serve it, so it could never act there (and costs ~2 s of CPU per teacher)
    from asc_ray.pipeline import runtime
    from asc_ray.pipeline.ray_private import PlacementGroupCleanerCallback

    monkeypatch.setattr(runtime, "_OWN_ADDRESS", [])  # (init_ray's environment ends with the test)
    job = _job(load_config("smoke"), "bcbl32_fms")

    def cleaner() -> bool:
        callbacks = build_trainer(job, str(tmp_path), use_gpu=False)._create_default_callbacks()
        return any(isinstance(c, PlacementGroupCleanerCallback) for c in callbacks)

    assert not runtime.own_local_ray() and cleaner()  # no Ray of ours yet: as on a cluster, it stays
    runtime.init_ray()
    assert runtime.own_local_ray() and not cleaner()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a driver that joined a cluster keeps it
    assert not runtime.own_local_ray() and cleaner()


def test_a_teachers_controller_reads_its_fit_without_importing_torch_or_asc_rays_training(tmp_path):
    # Ray Train's controller process unpickles the fit's run context (train loop config, backend config) and
    # callbacks: the job travels pickled inside the config and the backend config imports no torch, so reading
    # them imports no torch, MLflow, matplotlib or asc-ray training (~4 CPU s per teacher) - only the worker does
    import subprocess
    import sys

    from ray import cloudpickle

    t = build_trainer(_job(load_config("smoke"), "bcbl32_fms"), str(tmp_path), use_gpu=False)
    (tmp_path / "fit.pkl").write_bytes(
        cloudpickle.dumps((t.train_run_context, t._create_default_callbacks()))
    )
    heavy = ["asc_ray.pipeline.unit", "asc_ray.train", "torch", "mlflow", "matplotlib"]
    code = (
        "import pickle, sys; ctx, cbs = pickle.load(open(sys.argv[1], 'rb'));"
        f"print(ctx.backend_config.backend_cls.__module__, [m for m in {heavy!r} if m in sys.modules])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "fit.pkl")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["asc_ray.pipeline.process_group", "[]"], r.stdout
    job = cloudpickle.loads(t.train_run_context.train_loop_config["job"])  # what teacher_worker reads
    assert (job.system, job.split, job.key) == ("bcbl32_fms", 25, "0123456789abcdef")
