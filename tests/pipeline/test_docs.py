"""Docs that match the code: every config key is documented, and the README's commands exist."""

from pathlib import Path

from asc_ray.config import flatten, schema

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_key_is_in_the_reference():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = [k for k in flatten(schema()) if f"`{k}`" not in doc]
    assert not missing, f"document these keys in docs/config.md: {missing}"


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/run_local.sh" in readme and "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh\n" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command
    for rel in (
        "scripts/run_local.sh",
        "scripts/test.sh",
        "jobs/full_pipeline.py",
        "jobs/teachers.py",
        "jobs/logits.py",
        "jobs/students.py",
        "jobs/evaluate.py",
        "cluster.yaml",
        "docker/Dockerfile",
        "docs/cluster.md",
        "docs/config.md",
        "docs/architecture.md",
    ):
        assert (ROOT / rel).is_file(), rel


def test_run_local_with_data_but_no_profile_says_it_runs_smoke(tmp_path):
    """Its first lines, before any setup or training: which profile runs, and how to run the report's."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PROFILE"}
    env.update(
        DATA_DIR=str(tmp_path / "no-such-dir"),
        OUTPUT_DIR=str(tmp_path / "out"),
        ASC_RAY_VENV=str(ROOT / ".venv"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
    )
    p = subprocess.Popen(  # its own process group: the venv setup it starts is stopped with it
        ["bash", "scripts/run_local.sh"],
        start_new_session=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = [p.stdout.readline() for _ in range(2)]
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    assert "smoke" in first[0].lower() and "PROFILE=full" in "".join(first)


def test_fidelity_page_matches_the_code():
    """docs/fidelity.md is linked from the README and names what the code runs."""
    from asc_ray.features import NAMES
    from asc_ray.systems import SYSTEMS

    page = (ROOT / "docs" / "fidelity.md").read_text()
    assert "docs/fidelity.md" in (ROOT / "README.md").read_text()
    cfg = flatten(schema())
    assert all(f"`{fe}`" in page for fe in NAMES)
    assert all(f"`{s.frontend}`" in page for s in SYSTEMS.values())
    for key in (
        "bcbl.warmup_steps",
        "baseline.warmup_steps",
        "baseline.roll_s",
        "kd.kl_reduction",
        "augment.freqm",
        "focusnet.variant",
        "train.select",
    ):
        section, name = key.split(".")
        assert f"`{key}`" in page or f"`{section}.*`" in page or f"`{name}`" in page, key
    assert f"`{cfg['kd.kl_reduction']}`" in page and str(cfg["baseline.warmup_steps"]) in page
    assert "±0.1 s" in page and str(cfg["bcbl.warmup_steps"]) in page
    for difference in ("holdout", "Mixup mixes the inputs", "FocusNet as written", "silent"):
        assert difference in page
