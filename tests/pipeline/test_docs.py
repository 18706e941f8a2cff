"""Docs that match the code and stay readable: every config key is documented, the README's commands exist,
links between the docs resolve, and the pages keep to their length."""

import re
from pathlib import Path

from asc_ray.config import flatten, load_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "docker" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def words(path: Path) -> int:
    return len(path.read_text().split())  # what `wc -w` counts


def test_every_config_key_is_in_the_reference():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = [k for k in flatten(load_config("full")) if f"`{k}`" not in doc]
    assert not missing, f"document these keys in docs/config.md: {missing}"


def test_config_reference_gives_each_profiles_values():
    """The `full` and `smoke` columns of docs/config.md are what the profiles load (a blank smoke cell: as full)."""
    import yaml

    full, smoke = flatten(load_config("full")), flatten(load_config("smoke"))
    rows = {}
    for line in (ROOT / "docs" / "config.md").read_text().splitlines():
        m = re.match(r"\| `([\w.]+)`✓? \|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    wrong = []
    for key, value in full.items():
        doc_full, doc_smoke = rows[key]
        if not doc_full.startswith("all ") and yaml.safe_load(doc_full) != value:
            wrong.append(f"{key}: full {doc_full!r} != {value!r}")
        want = smoke[key] if smoke[key] != value else None
        if (yaml.safe_load(doc_smoke) if doc_smoke else None) != want:
            wrong.append(f"{key}: smoke {doc_smoke!r} != {want!r}")
    assert not wrong, "\n".join(wrong)


def test_config_reference_marks_the_keys_that_retrain():
    """docs/config.md's ✓ marks exactly the keys the schema declares trains() (asc_ray.schema)."""
    from asc_ray.schema import TRAINS, effect
    from asc_ray.sections import leaves

    marked = set(re.findall(r"^\| `([\w.]+)`✓ \|", (ROOT / "docs" / "config.md").read_text(), flags=re.M))
    declared = {k for k, info in leaves().items() if effect(info) == TRAINS}
    assert marked == declared, (
        f"mark with ✓: {sorted(declared - marked)}; unmark: {sorted(marked - declared)}"
    )


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


def test_pages_keep_to_their_length():
    """A README a newcomer reads in one sitting; docs/ with room for the pages still to come."""
    assert words(ROOT / "README.md") <= 1500, words(ROOT / "README.md")
    total = sum(words(p) for p in (ROOT / "docs").rglob("*.md"))
    assert total <= 15000, f"docs/ has {total} words"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_docs_resolve():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links only outside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            rel, _, anchor = target.partition("#")
            dest = (page.parent / rel).resolve() if rel else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_readme_screenshot_is_there_and_small():
    shot = ROOT / "docs" / "img" / "mlflow_students.png"
    assert "docs/img/mlflow_students.png" in (ROOT / "README.md").read_text()
    assert shot.is_file() and 20_000 < shot.stat().st_size < 300_000, shot


def test_docs_speak_to_users_not_to_the_tracker():
    """Figures carry a command, a machine and a date; no issue numbers or commit hashes."""
    for page in PAGES:
        text = page.read_text()
        assert not re.search(r"\bissues? \d+", text, re.I), f"{page.relative_to(ROOT)} cites an issue number"
        assert not re.search(r"\bcommit [0-9a-f]{7,40}\b", text), f"{page.relative_to(ROOT)} cites a commit"


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
    cfg = flatten(load_config("full"))
    assert all(f"`{fe}`" in page for fe in NAMES)
    assert all(f"`{s.frontend}`" in page for s in SYSTEMS.values())
    for key in (
        "bcbl.warmup_steps",
        "baseline.warmup_steps",
        "baseline.roll_s",
        "kd.kl_reduction",
        "augment.freqm",
        "focusnet.mask",
        "train.select",
        "students.seeds",
    ):
        section, name = key.split(".")
        assert f"`{key}`" in page or f"`{section}.*`" in page or f"`{name}`" in page, key
    assert f"`{cfg['kd.kl_reduction']}`" in page and str(cfg["baseline.warmup_steps"]) in page
    assert "±0.1 s" in page and str(cfg["bcbl.warmup_steps"]) in page
    for difference in (
        "holdout",
        "Mixup mixes the inputs",
        "FocusNet's mask as the code",
        "`no_kd`",
        "silent",
    ):
        assert difference in page
