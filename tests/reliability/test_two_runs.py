"""Two runs on one machine (slow: real local Rays). Each run's local Ray must find itself, not "the" Ray of
the machine: Ray Train V2's PlacementGroupCleaner actor looks its controller up through the state API with
no address, which scans the machine for GCS servers and failed with `ConnectionError: Found multiple active
Ray instances` as soon as a second Ray ran on the machine."""

from __future__ import annotations

import subprocess
import time

import pytest
from rel_helpers import PY, cli_env

pytestmark = pytest.mark.slow

PROBE = """
import os, sys, time
from asc_ray.pipeline.runtime import init_ray
import ray
init_ray()

@ray.remote(num_cpus=0)
def look():
    # exactly the lookup Ray Train V2's PlacementGroupCleaner does inside its actor
    from ray.train.v2._internal.state.util import is_actor_alive
    from ray.util.state.exception import RayStateApiException
    try:
        is_actor_alive("ffffffffffffffffffffffff01000000", timeout=5)
        r = "ok"
    except RayStateApiException as e:  # the cleaner catches these and keeps monitoring
        r = "tolerated " + type(e).__name__
    except Exception as e:
        r = f"FAILED {type(e).__name__}: {e}"
    return os.environ.get("RAY_ADDRESS"), r

print("started", ray.get_runtime_context().gcs_address, flush=True)
time.sleep(float(sys.argv[1]))
addr, r = ray.get(look.remote())
print("RESULT", addr, ray.get_runtime_context().gcs_address, r, flush=True)
ray.shutdown()
"""


def test_two_local_rays_each_find_their_own(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db")
    first = subprocess.Popen(
        [PY, "-c", PROBE, "40"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout.readline().startswith("started"), first.stderr.read()[-3000:]
        r = subprocess.run(
            [PY, "-c", PROBE, "0"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
        )
        out_first, err_first = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    for rc, out, err in ((r.returncode, r.stdout, r.stderr), (first.returncode, out_first, err_first)):
        assert rc == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        _, worker_addr, gcs, verdict = line.split(" ", 3)
        assert worker_addr == gcs, line  # the worker's RAY_ADDRESS is its own run's GCS
        assert not verdict.startswith("FAILED"), line


def test_init_ray_again_in_the_same_process_starts_a_new_local_ray(tmp_path):
    """The RAY_ADDRESS a run sets for its own Ray must not make a later init_ray() (after shutdown) try to
    join the dead instance."""
    code = (
        "import os, ray\nfrom asc_ray.pipeline.runtime import init_ray\n"
        "init_ray(); a = os.environ['RAY_ADDRESS']; ray.shutdown()\n"
        "init_ray(); b = os.environ['RAY_ADDRESS']\n"
        "assert a != b and ray.get_runtime_context().gcs_address == b, (a, b)\nray.shutdown()\nprint('ok')\n"
    )
    t0 = time.time()
    r = subprocess.run(
        [PY, "-c", code],
        env=cli_env(f"sqlite:///{tmp_path}/mlflow.db"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
    assert time.time() - t0 < 240


def test_two_pipelines_on_one_machine_both_finish(synth_dataset, tmp_path):
    """Two small real pipelines at once, different output dirs, one MLflow store: both end with exit 0,
    results and no 'multiple active Ray instances'."""
    from rel_helpers import ROOT

    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db")
    args = [
        "--splits",
        "25",
        "--profile",
        "smoke",
        "--epochs",
        "1",
        "teachers.systems=[bcbl32_fms]",
        "students.systems=[baseline]",
    ]
    procs = []
    for name in ("a", "b"):
        cmd = [str(ROOT / "jobs" / "full_pipeline.py"), "--data-dir", str(synth_dataset)]
        cmd += ["--output-dir", str(tmp_path / name), *args]
        log = open(tmp_path / f"{name}.log", "w")
        procs.append(
            subprocess.Popen([PY, *cmd], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        )
        time.sleep(5)  # the second starts while the first one's Ray is up
    for p in procs:
        p.wait(timeout=1200)
    for name, p in zip(("a", "b"), procs, strict=True):
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert p.returncode == 0, text[-4000:]
        assert "multiple active Ray instances" not in text, text[-4000:]
        # no traceback of the driver (lines of Ray's own processes start with "(Name pid=...)": under CPU
        # overload Ray Train's controller logs a tolerated GetTimeoutError with its traceback)
        assert not [x for x in text.splitlines() if x.startswith("Traceback")], text[-4000:]
        assert (tmp_path / name / "results.csv").is_file()
