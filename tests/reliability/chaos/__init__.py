"""The chaos harness: the pipeline once undisturbed and once under a seeded schedule of faults (run.py), the
faults and how each is injected (faults.py), the processes and MLflow server of the faulted run (env.py), and what
must hold after it (checks.py). tests/reliability/test_chaos.py runs it; by hand (a schedule that failed there,
or the default one of docs/benchmarks.md):

    python tests/reliability/chaos --seed 4242 [options of run.py]
"""
