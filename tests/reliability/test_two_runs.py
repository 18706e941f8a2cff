"""Two runs on one machine (slow: real local Rays). Each run's local Ray must find itself, not "the" Ray of
the machine: Ray Train V2's PlacementGroupCleaner actor looks its controller up through the state API with
no address, which scans the machine for GCS servers and failed with `ConnectionError: Found multiple active
Ray instances` as soon as a second Ray ran on the machine."""

from __future__ import annotations

import subprocess

import pytest
from helpers.console import said
from helpers.procs import PY, ROOT, Background, cli_env, run_py

from asc_ray.pipeline.run import RAY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROBE = """
import os, sys
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
sys.stdin.readline()  # the test says when: while another local Ray runs
addr, r = ray.get(look.remote())
print("RESULT", addr, ray.get_runtime_context().gcs_address, r, flush=True)
ray.shutdown()
"""


def test_two_local_rays_each_find_their_own(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db")

    def probe() -> subprocess.Popen:  # a driver that starts its local Ray, then waits on its stdin
        return subprocess.Popen(
            [PY, "-c", PROBE], env=env, cwd=tmp_path, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    first = probe()
    try:
        assert first.stdout.readline().startswith("started"), first.stderr.read()[-3000:]
        # the second Ray starts and looks while the first one is up (it waits on its stdin) ...
        second = probe()
        assert second.stdout.readline().startswith("started"), second.stderr.read()[-3000:]
        # ... then the first looks while the second is up
        out_first, err_first = first.communicate("go\n", timeout=240)
        out_second, err_second = second.communicate("go\n", timeout=240)
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    results = []
    for p, out, err in ((first, out_first, err_first), (second, out_second, err_second)):
        assert p.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        _, worker_addr, gcs, verdict = line.split(" ", 3)
        assert worker_addr == gcs, line  # the worker's RAY_ADDRESS is its own run's GCS
        assert not verdict.startswith("FAILED"), line
        results.append(gcs)
    assert results[0] != results[1]  # two Rays, each found its own


def test_init_ray_again_in_the_same_process_starts_a_new_local_ray(tmp_path):
    """The RAY_ADDRESS a run sets for its own Ray must not make a later init_ray() (after shutdown) try to
    join the dead instance."""
    code = (
        "import os, ray\nfrom asc_ray.pipeline.runtime import init_ray\n"
        "init_ray(); a = os.environ['RAY_ADDRESS']; ray.shutdown()\n"
        "init_ray(); b = os.environ['RAY_ADDRESS']\n"
        "assert a != b and ray.get_runtime_context().gcs_address == b, (a, b)\nray.shutdown()\nprint('ok')\n"
    )
    r = run_py(["-c", code], cli_env(f"sqlite:///{tmp_path}/mlflow.db"), tmp_path, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.timeout(1500)
def test_two_pipelines_on_one_machine_both_finish(synth_dataset, tmp_path):
    """Two small real pipelines at once, different output dirs, one MLflow store: both end with exit 0,
    results and no 'multiple active Ray instances'."""
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db")
    args = [
        *("--data-dir", str(synth_dataset), "--splits", "25", "--profile", "smoke", "--epochs", "1"),
        *("teachers.systems=[bcbl32_fms]", "students.systems=[baseline]"),
    ]
    runs = {}
    for name in ("a", "b"):
        cmd = [str(ROOT / "jobs" / "full_pipeline.py"), "--output-dir", str(tmp_path / name), *args]
        runs[name] = Background(cmd, env, tmp_path, tmp_path / f"{name}.log")
        # the next starts once this one's Ray is up
        runs[name].wait_for(lambda r=runs[name]: said(RAY, r.text(), logged=True), 300, f"run {name}'s Ray")
        assert runs["a"].p.poll() is None  # the first still runs: the two Rays are up at once
    for name, r in runs.items():
        rc = r.finish(1200)
        text = r.text()
        assert rc == 0, text[-4000:]
        assert "multiple active Ray instances" not in text, text[-4000:]
        # no traceback of the driver (lines of Ray's own processes start with "(Name pid=...)": under CPU
        # overload Ray Train's controller logs a tolerated GetTimeoutError with its traceback)
        assert not [x for x in text.splitlines() if x.startswith("Traceback")], text[-4000:]
        assert (tmp_path / name / "results.csv").is_file()
