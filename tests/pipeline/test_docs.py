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
