"""Chaos, for real (slow): bench/chaos.py on a small graph - one split, a PaSST and a CNN teacher, kd_ensemble and
tfs (what the teachers feed), baseline (a student without teachers), four epochs each - once undisturbed (shared
by the seeds) and once per schedule seed under 8 faults drawn at random points of its progress: SIGKILL of a Ray
Train worker, a Tune trial actor, the LogitAggregator, a worker node's raylet, the driver (then the same command
again), and a restart of a real `mlflow server`; every kind in every schedule. What must hold is the bench's own
verdict (bench/_chaos_checks.py): every unit finished once, the outputs and MLflow's histories bit for bit
those of the undisturbed run, one MLflow run and registered version per unit, a console line per fault, no
process left."""

from __future__ import annotations

import re

import pytest
from helpers.procs import ROOT, cli_env, run_py

pytestmark = [pytest.mark.slow]

SMALL = [
    "--splits",
    "25",
    "teachers.systems=[passt_fms,bcbl32_fms]",
    "students.systems=[kd_ensemble,tfs,baseline]",
    "--",
    "--epochs",
    "4",
]
FAULT = re.compile(r"\] fault (\d+)/(\d+) \(seed (\d+)\): (\w+): (.+) at (.+)$", re.M)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Where the undisturbed run is kept: the first seed makes it, the others reuse it."""
    return tmp_path_factory.mktemp("chaos_reference")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_pipeline_under_random_faults_ends_as_an_undisturbed_one(seed, synth_dataset, reference, tmp_path):
    args = [str(ROOT / "bench" / "chaos.py"), "--seed", str(seed), "--data-dir", str(synth_dataset)]
    args += ["--work", str(tmp_path), "--reference", str(reference), *SMALL]
    r = run_py(args, cli_env(), tmp_path, timeout=840)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    faults = FAULT.findall(r.stdout)
    assert len(faults) >= 8 and {k for *_, k, _, _ in faults} >= {
        "worker",
        "trial",
        "aggregator",
        "raylet",
        "driver",
        "mlflow",
    }, out[-6000:]
    assert all(int(s) == seed for _, _, s, *_ in faults)
    assert "verdict: PASS" in r.stdout and r.stdout.strip().endswith("chaos_failures 0"), out[-6000:]
