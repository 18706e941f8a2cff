"""Static checks of docker/Dockerfile and .dockerignore (no Docker engine needed).

They pin the image to the project: Ray version of the base image == the ray pin in pyproject.toml,
torch/torchaudio == the pins, image version == package version, non-root user, a build context
without venvs, data, outputs or MLflow stores, and COPY sources that exist (and are not ignored).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKER_README = ROOT / "docker" / "README.md"


# ----------------------------------------------------------------------------- helpers
def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        current = ""
    if current.strip():
        word, _, rest = current.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerignore_patterns(text: str) -> list[tuple[bool, str]]:
    """(negated, pattern) pairs in file order."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        out.append((neg, pat.strip("/").removeprefix("./")))
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's (Go filepath.Match) semantics: `*` and `?` stay within one path element, `**`
    spans any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _match(pattern: str, path: str) -> bool:
    """A pattern that matches the path or one of its parent directories excludes the path."""
    rx = _pattern_regex(pattern)
    parts = path.split("/")
    return any(rx.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def is_ignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    ignored = False
    for neg, pat in patterns:  # last match wins
        if _match(pat, path):
            ignored = not neg
    return ignored


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs}


def exact_pin(name: str) -> str:
    spec = list(pins()[name].specifier)
    assert len(spec) == 1 and spec[0].operator == "==", f"{name} is expected to be pinned with =="
    return spec[0].version


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "docker/Dockerfile is missing"
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def ignore() -> list[tuple[bool, str]]:
    assert DOCKERIGNORE.is_file(), ".dockerignore (build context is the repository root) is missing"
    return dockerignore_patterns(DOCKERIGNORE.read_text())


def run_text(instructions) -> str:
    return "\n".join(args for ins, args in instructions if ins == "RUN")


# ----------------------------------------------------------------------------- parser self-test
def test_parser_joins_continuations_and_ignorer_follows_last_match():
    ins = parse_dockerfile("# c\nFROM a:1\nRUN x \\\n  # inner\n  && y\nUSER ray\n")
    assert ins == [("FROM", "a:1"), ("RUN", "x  && y"), ("USER", "ray")]
    pats = dockerignore_patterns("data\n**/__pycache__\n*.db\n!keep.db\n")
    assert is_ignored("data/x.wav", pats) and is_ignored("asc_ray/__pycache__/a.pyc", pats)
    assert is_ignored("mlflow.db", pats) and not is_ignored("keep.db", pats)
    assert not is_ignored("asc_ray/data/tau.py", pats) and not is_ignored("asc_ray/x.db", pats)


# ----------------------------------------------------------------------------- base image
def test_base_image_is_official_ray_gpu_image_with_the_pinned_ray_version(instructions):
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert len(froms) == 1, f"expected one stage, got FROM {froms}"
    image = froms[0].split()[0]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu\d+)", image)
    assert m, f"FROM {image}: expected rayproject/ray:<version>-py3XX-gpu (ray-ml images are discontinued)"
    ray_version, py_minor = Version(m.group(1)), m.group(2)
    ray_req = pins()["ray"]
    assert ray_req.specifier.contains(ray_version), (
        f"base image has Ray {ray_version}, pyproject pins {ray_req}: cluster and laptop must run the same Ray"
    )
    assert {"default", "train", "tune"} <= set(ray_req.extras)
    requires_python = pyproject()["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires_python).contains(Version(f"3.{py_minor}")), (
        f"image Python 3.{py_minor} outside requires-python {requires_python}"
    )


def test_runtime_check_asserts_the_same_ray_version(instructions):
    froms = [args for ins, args in instructions if ins == "FROM"][0]
    version = re.search(r":(\d+\.\d+\.\d+)-", froms).group(1)
    assert f"ray.__version__ == '{version}'" in run_text(instructions)


# ----------------------------------------------------------------------------- pinned deps
@pytest.mark.parametrize("name", ["torch", "torchaudio"])
def test_torch_versions_match_pyproject(instructions, name):
    want = exact_pin(name)
    got = re.findall(rf"(?<![\w-]){name}==([\w.+]+)", run_text(instructions))
    assert got, f"{name} is not installed explicitly (with its CUDA wheel) in the Dockerfile"
    assert set(got) == {want}, f"Dockerfile installs {name}=={got}, pyproject pins {want}"


def test_torch_comes_from_a_cuda_wheel_index(instructions):
    args = dict(a.split("=", 1) for ins, a in instructions if ins == "ARG" and "=" in a)
    text = run_text(instructions)
    line = next(ln for ln in text.splitlines() if "torch==" in ln)
    url = re.search(r"--(?:extra-)?index-url\s+\"?([^\s\"]+)", line)
    assert url, "torch must be installed from PyTorch's CUDA index (--index-url)"
    resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), url.group(1))
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", resolved), resolved


def test_package_installed_from_the_copied_sources(instructions):
    order = [(ins, args) for ins, args in instructions if ins in {"COPY", "RUN"}]
    copied_before_install: list[str] = []
    for ins, args in order:
        if ins == "COPY":
            copied_before_install += [s.rstrip("/") for s in _copy_sources(args)]
        elif re.search(r"pip install (?:[^&]*\s)?\.(\s|$)", args):
            break
    else:
        pytest.fail("no `pip install .` in the Dockerfile")
    for needed in ("pyproject.toml", "README.md", "asc_ray"):  # README: pyproject's readme field
        assert needed in copied_before_install, f"{needed} must be copied before `pip install .`"


def test_image_version_label_matches_package_version(instructions):
    version = pyproject()["project"]["version"]
    labels = " ".join(args for ins, args in instructions if ins == "LABEL")
    m = re.search(r'org\.opencontainers\.image\.version="?([\w.+-]+)"?', labels)
    assert m and m.group(1) == version, f"image version label {m and m.group(1)} != package {version}"


def test_image_tags_in_docs_match_package_version():
    version = pyproject()["project"]["version"]
    for path in (DOCKER_README, ROOT / "docs" / "cluster.md", ROOT / "cluster.yaml"):
        tags = re.findall(r"asc-ray:(\d[\w.+-]*)", path.read_text())
        assert tags, f"{path.relative_to(ROOT)} names no asc-ray:<version> image"
        assert set(tags) == {version}, f"{path.relative_to(ROOT)} tags {sorted(set(tags))} != {version}"


# ----------------------------------------------------------------------------- user / secrets
def test_runs_as_non_root_user(instructions):
    user = "root"  # Docker's default if a base image set none
    final_user_at_cmd = None
    for ins, args in instructions:
        if ins == "USER":
            user = args.split(":")[0].strip()
        if ins in {"CMD", "ENTRYPOINT"}:
            final_user_at_cmd = user
    assert user not in {"root", "0"}, "the last USER must be non-root"
    if final_user_at_cmd is not None:
        assert final_user_at_cmd not in {"root", "0"}, "CMD/ENTRYPOINT would run as root"
    assert user == "ray", "use the Ray image's own user (uid 1000), matching cluster.yaml's chown 1000:100"


def test_workdir_set_and_no_secrets_baked_in(instructions):
    assert any(ins == "WORKDIR" for ins, _ in instructions)
    for ins, args in instructions:
        if ins in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|AWS_ACCESS_KEY|AWS_SECRET)", args, re.I), (
                f"{ins} {args}: never bake credentials into the image"
            )
        if ins in {"COPY", "ADD"}:
            assert not re.search(r"auth_token|\.pem|\.aws|\.ray\b", args), f"{ins} {args} copies a secret"
    assert not any(ins == "ADD" for ins, _ in instructions), "use COPY (ADD fetches URLs / unpacks archives)"


def test_libsndfile_installed_for_soundfile(instructions):
    assert re.search(r"apt-get install[^\n]*libsndfile1", run_text(instructions))
    assert "rm -rf /var/lib/apt/lists" in run_text(instructions)


# ----------------------------------------------------------------------------- build context
def _copy_sources(args: str) -> list[str]:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    return words[:-1]


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        ".venv/bin/python",
        "data",
        "data/tau/meta.csv",
        "outputs",
        "outputs/x/logits.parquet",
        "mlflow.db",
        "mlruns",
        "mlartifacts",
        ".git",
        "asc_ray/__pycache__/x.pyc",
        "ray_results",
    ],
)
def test_dockerignore_keeps_local_state_out(ignore, path):
    assert is_ignored(path, ignore), f"{path} would be sent to the Docker build context"


def test_every_copy_source_exists_and_is_in_the_context(instructions, ignore):
    sources = [s for ins, args in instructions if ins == "COPY" for s in _copy_sources(args)]
    assert sources, "no COPY instruction"
    for src in sources:
        assert not src.startswith(("/", "..")), f"COPY {src}: must be relative to the repository root"
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not is_ignored(src.rstrip("/"), ignore), f"COPY {src}: excluded by .dockerignore"
    # the package's own files must not be ignored (e.g. a too-broad `data` pattern)
    for f in (ROOT / "asc_ray").rglob("*.py"):
        rel = f.relative_to(ROOT).as_posix()
        if "__pycache__" not in rel:
            assert not is_ignored(rel, ignore), f"{rel} is excluded by .dockerignore"


def test_readme_documents_build_push_and_runtime_env():
    text = DOCKER_README.read_text()
    assert "docker build -f docker/Dockerfile" in text and text.count("docker push") >= 1
    assert "ecr get-login-password" in text
    assert "runtime_env" in text
