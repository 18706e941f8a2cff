"""cluster.yaml: Ray's own validator (offline, as Ray's tests do) plus checks of what the validator
cannot know: dashboard on 127.0.0.1, token auth on, no public ingress but SSH, GPU worker types that
fit the job's resource requests, image tag == package version, shared storage for storage_path,
MLflow reachable from every node, on PostgreSQL with logins whose passwords come from files outside the
repository, documented placeholders. No AWS or network calls."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
DOCS = ROOT / "docs" / "cluster.md"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
MLFLOW_SCRIPT = ROOT / "scripts" / "mlflow_server.sh"

# What jobs/full_pipeline.py asks for on a cluster (docs/cluster.md passes these overrides).
TEACHER_GPU, TEACHER_CPU = 1, 4  # teachers.gpus_per_worker / teachers.cpus_per_worker
STUDENT_GPU, STUDENT_CPU = 0.25, 2  # students.gpus_per_trial / students.cpus_per_trial
SHARED_PREFIXES = ("s3://", "/mnt/efs/")
# the files of the secrets folder file_mounts copies to every node, beside Ray's auth_token
MLFLOW_SECRETS = {
    "PGPASSWORD_FILE": "postgres_password",
    "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": "mlflow_admin_password",
    "CLIENT_PASSWORD_FILE": "mlflow_password",
}

# vCPUs / GPUs of the instance types this config may use (AWS instance-type pages).
INSTANCES = {
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6.4xlarge": (16, 1),
    "g6.12xlarge": (48, 4),
    "g6e.xlarge": (4, 1),
    "g6e.2xlarge": (8, 1),
    "g6e.12xlarge": (48, 4),
    "p4d.24xlarge": (96, 8),
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "m6i.2xlarge": (8, 0),
}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))  # fills in aws/defaults.yaml; no boto3, no AWS call
    validate_config(cfg)
    return cfg


def workers(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def docker_options(cfg: dict) -> list[str]:
    d = cfg.get("docker", {})
    opts = list(d.get("run_options", [])) + list(d.get("head_run_options", []))
    opts += list(d.get("worker_run_options", []))
    for nt in cfg["available_node_types"].values():
        opts += list(nt.get("docker", {}).get("worker_run_options", []))
    return opts


def env_options(cfg: dict) -> dict[str, str]:
    out = {}
    for opt in docker_options(cfg):
        words = shlex.split(opt)
        for flag, val in zip(words, words[1:], strict=False):
            if flag in {"-e", "--env"} and "=" in val:
                k, v = val.split("=", 1)
                out[k] = v
    return out


def volume_targets(cfg: dict) -> dict[str, str]:
    out = {}
    for opt in docker_options(cfg):
        words = shlex.split(opt)
        for flag, val in zip(words, words[1:], strict=False):
            if flag in {"-v", "--volume"}:
                src, dst = val.split(":")[:2]
                out[dst] = src
    return out


def all_commands(cfg: dict) -> list[str]:
    keys = [
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ]
    return [c for k in keys for c in cfg.get(k, [])]


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# ----------------------------------------------------------------------------- Ray's validator
def test_validates_with_rays_own_validator(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validator_is_live_on_a_broken_copy(raw):
    """Guards against a validator that accepts anything (e.g. a schema that is not loaded)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_typo"] = {"node_config": {}, "resources": {"GPU": 0.5}}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(raw)
    broken["docker"]["run_option"] = []  # misspelt key: rejected, not ignored
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_defaults_do_not_sneak_in(prepared):
    """prepare_config merges aws/defaults.yaml key by key: these must come from us, not from
    the defaults (which pip-install a Ray nightly and bind the dashboard to 0.0.0.0)."""
    defaults_markers = ["ray-3.0.0.dev0", "anaconda3/envs/tensorflow2", "boto3>=1.4.8"]
    for cmd in all_commands(prepared):
        for marker in defaults_markers:
            assert marker not in cmd, f"default command leaked into the config: {cmd}"


@pytest.mark.parametrize(
    "key",
    [
        "initialization_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ],
)
def test_commands_are_valid_shell(prepared, key):
    for cmd in prepared[key]:
        res = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert res.returncode == 0, f"{key}: {cmd}\n{res.stderr}"


# ----------------------------------------------------------------------------- head / dashboard
def _ray_start(cmds: list[str], head: bool) -> str:
    starts = [c for c in cmds if "ray start" in c and (("--head" in c) == head)]
    assert len(starts) == 1, f"expected one `ray start` {'--head' if head else 'worker'} command"
    return starts[0]


def test_dashboard_and_job_api_bound_to_localhost(prepared):
    start = _ray_start(prepared["head_start_ray_commands"], head=True)
    m = re.search(r"--dashboard-host[= ](\S+)", start)
    assert m and m.group(1) == "127.0.0.1", (
        "head must start with --dashboard-host=127.0.0.1 (reach it via `ray dashboard`)"
    )
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    for cmd in all_commands(prepared):
        assert "0.0.0.0" not in cmd, f"binds to every interface: {cmd}"


def test_head_runs_no_tasks(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    assert head.get("max_workers", 0) == 0


def test_token_auth_on_everywhere(prepared):
    env = env_options(prepared)
    assert env.get("RAY_AUTH_MODE") == "token", "set -e RAY_AUTH_MODE=token in docker.run_options"
    text = CLUSTER_YAML.read_text() + json.dumps(prepared)
    assert "RAY_AUTH_MODE=disabled" not in text
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    assert token_path, "nodes need RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to find the shared token"
    mounted = [
        remote for remote in prepared["file_mounts"] if token_path.startswith(remote.rstrip("/") + "/")
    ]
    assert mounted, f"{token_path} is not inside any file_mounts target"
    local = Path(prepared["file_mounts"][mounted[0]]).expanduser()
    assert ROOT not in local.parents and local != ROOT, "keep the token outside the repository"


# ----------------------------------------------------------------------------- network
def test_no_internet_ingress_except_ssh(prepared):
    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        public = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        if {"0.0.0.0/0", "::/0"} & set(public):
            assert rule.get("FromPort") == rule.get("ToPort") == 22, f"open to the internet: {rule}"
    for name, nt in prepared["available_node_types"].items():
        # Without SecurityGroupIds Ray creates its default group: SSH from 0.0.0.0/0.
        assert nt["node_config"].get("SecurityGroupIds"), f"{name}: name your own security group"
    for opt in docker_options(prepared):
        assert not re.match(r"(-p|--publish)\b", opt.strip()), f"publishes a port: {opt}"


# ----------------------------------------------------------------------------- node types
def test_gpu_worker_types_fit_the_job(prepared):
    ws = workers(prepared)
    gpu_types = {k: v for k, v in ws.items() if v["resources"].get("GPU", 0) >= 1}
    assert len(gpu_types) >= 2, "need a small GPU type (students) and a large one (PaSST teachers)"
    counts = sorted(v["resources"]["GPU"] for v in gpu_types.values())
    assert counts[0] == 1 and counts[-1] >= 4, f"GPU counts {counts}"
    for name, nt in gpu_types.items():
        cpu, gpu = nt["resources"].get("CPU", 0), nt["resources"]["GPU"]
        assert cpu >= gpu * TEACHER_CPU / TEACHER_GPU, f"{name}: not enough CPUs for one teacher per GPU"
        assert 0 <= nt["min_workers"] <= nt["max_workers"] <= prepared["max_workers"], name
    small = min(gpu_types.values(), key=lambda v: v["resources"]["GPU"])
    trials = small["resources"]["GPU"] / STUDENT_GPU
    assert small["resources"]["CPU"] >= trials * STUDENT_CPU, "students can't fill the GPU: too few CPUs"
    assert sum(v.get("min_workers", 0) for v in ws.values()) == 0, "GPU nodes should start on demand"


def test_resources_match_the_instance_types(prepared):
    for name, nt in prepared["available_node_types"].items():
        itype = nt["node_config"]["InstanceType"]
        assert itype in INSTANCES, f"{name}: unknown instance type {itype}, add it to INSTANCES"
        vcpu, gpus = INSTANCES[itype]
        res = nt["resources"]
        assert res.get("GPU", 0) == gpus, (
            f"{name}: {itype} has {gpus} GPUs, resources say {res.get('GPU', 0)}"
        )
        assert res.get("CPU", vcpu) <= vcpu, f"{name}: {itype} has {vcpu} vCPUs"


def test_autoscaling_settings(prepared):
    assert 1 <= prepared["idle_timeout_minutes"] <= 30
    assert prepared["max_workers"] >= max(v["max_workers"] for v in workers(prepared).values())
    assert prepared["provider"].get("cache_stopped_nodes") is False


# ----------------------------------------------------------------------------- image
def test_image_tag_matches_package_and_dockerfile(prepared):
    image = prepared["docker"]["image"]
    assert image.rsplit(":", 1)[-1] == version(), f"{image}: tag must be the package version {version()}"
    assert image.rsplit(":", 1)[0].endswith("/asc-ray")
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', DOCKERFILE.read_text())
    assert label and label.group(1) == version()
    assert prepared["docker"]["container_name"] and prepared["docker"].get("pull_before_run") is True
    assert prepared["setup_commands"] == [] and prepared["worker_setup_commands"] == [], (
        "the image holds the environment: no pip at node start-up"
    )


def test_mlflow_script_is_in_the_image_where_the_head_starts_it(prepared):
    text = DOCKERFILE.read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.M)[-1]
    copy_line = next(
        ln for ln in text.splitlines() if ln.startswith("COPY") and "scripts/mlflow_server.sh" in ln
    )
    dest = copy_line.split()[-1]
    in_image = (Path(workdir) / dest).as_posix().replace("/./", "/")
    head = " ".join(prepared["head_start_ray_commands"])
    assert in_image in head, f"the image has the script at {in_image}; the head starts another path"


# ----------------------------------------------------------------------------- storage / MLflow
def test_shared_storage_mounted_on_every_node(prepared):
    init = " ".join(prepared["initialization_commands"])
    assert re.search(r"mount -t nfs4 .*:/ /mnt/efs", init), "EFS must be mounted at /mnt/efs on the host"
    assert volume_targets(prepared).get("/mnt/efs") == "/mnt/efs", "and bind-mounted into the container"
    ckpt = env_options(prepared).get("ASC_RAY_PASST_CHECKPOINT", "")
    assert ckpt.startswith(SHARED_PREFIXES), "the PaSST checkpoint must be readable on every node"


def test_each_node_keeps_its_waveform_cache_on_its_own_disk(prepared):
    """data.cache_dir defaults to $ASC_RAY_CACHE_DIR on a cluster: a folder on the node's NVMe volume."""
    cache = env_options(prepared).get("ASC_RAY_CACHE_DIR", "")
    volumes = volume_targets(prepared)
    mount = next((dst for dst in volumes if cache.startswith(dst.rstrip("/") + "/")), None)
    assert mount and not mount.startswith("/mnt/efs"), f"ASC_RAY_CACHE_DIR={cache!r} must be node-local"
    assert "nvme" in volumes[mount]


def _job_commands() -> list[str]:
    """The documented `ray job submit` commands for cluster.yaml's cluster (the KubeRay one, with the shared
    volume's /mnt/shared paths, is tests/cluster/test_k8s_manifests.py's)."""
    text = DOCS.read_text().replace("\\\n", " ")
    return [
        line
        for line in text.splitlines()
        if "jobs/full_pipeline.py" in line and "ray job submit" in line and "/mnt/shared/" not in line
    ]


def test_documented_job_uses_shared_storage_and_cluster_resources():
    jobs = _job_commands()
    assert jobs, "docs/cluster.md must show the `ray job submit ... jobs/full_pipeline.py` command"
    for job in jobs:
        assert "--address http://127.0.0.1:8265" in job and "--working-dir ." in job
        words = shlex.split(job.split(" -- ", 1)[1])
        opts = dict(zip(words, words[1:], strict=False))
        kv = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        for key in ("--data-dir", "--output-dir"):
            assert opts.get(key, "").startswith(SHARED_PREFIXES), f"{key} must be on shared storage"
        assert kv.get("storage_path", "").startswith(SHARED_PREFIXES), "storage_path must be shared (S3/EFS)"
        assert not kv.get("data.cache_dir", "/mnt/local").startswith("/mnt/efs"), "cache is node-local"
        assert float(kv["teachers.gpus_per_worker"]) == TEACHER_GPU
        assert float(kv["students.gpus_per_trial"]) == STUDENT_GPU
        assert "--splits 5,10,25,50,100" in job and "--profile full" in job


def test_mlflow_tracking_uri_reaches_every_node(prepared):
    if "MLFLOW_TRACKING_URI" in env_options(prepared):
        return  # an external server for all nodes
    head = _ray_start(prepared["head_start_ray_commands"], head=True)
    worker = _ray_start(prepared["worker_start_ray_commands"], head=False)
    for cmd, host in ((head, "$HEAD_IP"), (worker, "$RAY_HEAD_IP")):
        before = cmd.split("ray start")[0]
        assert f"export MLFLOW_TRACKING_URI=http://{host}:5000" in before, cmd
    m = re.search(r"HOST=(\S+)[^;]*mlflow_server\.sh", head)
    assert m and m.group(1) == "$HEAD_IP", "MLflow on the head's private address, not 0.0.0.0"


def _secrets_dir(prepared) -> str:
    """The file_mounts target that holds Ray's token: the secrets folder on every node."""
    token_path = env_options(prepared)["RAY_AUTH_TOKEN_PATH"]
    return next(r.rstrip("/") for r in prepared["file_mounts"] if token_path.startswith(r.rstrip("/") + "/"))


def _expand(cmd: str) -> str:
    """The command with its own plain `NAME=value;` shell variables substituted ($SECRETS, ...)."""
    for name, value in re.findall(r"(?:^|;)\s*([A-Z_]+)=([^\s;$]+);", cmd):
        cmd = cmd.replace(f"${name}", value)
    return cmd


def _server_env(prepared) -> dict[str, str]:
    """The variables the head sets for scripts/mlflow_server.sh (the assignments before `nohup`)."""
    head = _expand(_ray_start(prepared["head_start_ray_commands"], head=True))
    line = head.split("mlflow_server.sh")[0].rsplit(";", 1)[1]
    words = shlex.split(line.split("nohup")[0])
    return dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))


def test_mlflow_server_on_postgres_with_basic_auth(prepared):
    env = _server_env(prepared)
    assert env.get("AUTH") == "1", "the head's MLflow server runs MLflow's basic-auth app"
    store = urlparse(env.get("BACKEND_STORE_URI", ""))
    assert store.scheme == "postgresql" and store.password is None, "PostgreSQL, its password from a file"
    assert env.get("ARTIFACTS_DESTINATION", "").startswith(SHARED_PREFIXES), "artifacts outlive the head"
    secrets = _secrets_dir(prepared)
    for var, name in MLFLOW_SECRETS.items():
        assert env.get(var) == f"{secrets}/{name}", f"{var}: a file in the secrets folder file_mounts copies"
    assert env.get("CLIENT_USERNAME"), "the script creates the user asc-ray logs in as"


def test_every_node_logs_in_to_mlflow_from_a_file(prepared):
    user, secrets = _server_env(prepared)["CLIENT_USERNAME"], _secrets_dir(prepared)
    head = _expand(_ray_start(prepared["head_start_ray_commands"], head=True))
    worker = _expand(_ray_start(prepared["worker_start_ray_commands"], head=False))
    for cmd in (head, worker):
        before = cmd.split("ray start")[0]  # exported before `ray start`: the raylet and every worker have it
        assert f"export MLFLOW_TRACKING_USERNAME={user};" in before, cmd
        assert f"export MLFLOW_TRACKING_PASSWORD=$(cat {secrets}/mlflow_password);" in before, cmd
    # never in `docker run -e` (docker inspect shows it) nor as a value anywhere in this file
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"} & set(
        env_options(prepared)
    )
    for cmd in all_commands(prepared):
        for name, value in re.findall(r"(\w*PASSWORD\w*)=(\S+)", cmd):
            assert name.endswith("_FILE") or value == "$(cat", f"a password in cluster.yaml: {cmd}"


def test_the_image_has_the_servers_python_packages(prepared):
    """The head runs the MLflow server from the image: its `server` extra is in the dependency layer, at the
    locked versions, and nothing is pip-installed at start-up."""
    assert not any("pip install" in c for c in all_commands(prepared))
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "server"
    ]
    assert {r.split(">")[0] for r in server} == {"mlflow[auth]", "psycopg[binary]"}
    assert "['optional-dependencies']['server']" in DOCKERFILE.read_text()
    locked = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^psycopg-binary==", locked, re.M) and re.search(r"^flask-wtf==", locked, re.M)


def _dry_run(tmp_path, **env) -> str:
    return subprocess.run(
        ["bash", str(MLFLOW_SCRIPT)],
        env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_mlflow_server_script_local_and_shared_defaults(tmp_path):
    assert MLFLOW_SCRIPT.stat().st_mode & 0o111, "scripts/mlflow_server.sh must be executable"
    # one machine: loopback, the SQLite store a local run writes, no login
    out = _dry_run(tmp_path)
    assert "--host 127.0.0.1" in out and f"sqlite:///{tmp_path}/mlflow.db" in out
    assert "--app-name" not in out and "--serve-artifacts" in out
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in out
    # a server others reach: PostgreSQL and basic-auth by default, users in a database of their own
    out = _dry_run(
        tmp_path, HOST="10.0.1.23", PGPASSWORD="pg-secret", MLFLOW_AUTH_ADMIN_PASSWORD="admin-secret"
    )
    assert "--host 10.0.1.23" in out and "--app-name basic-auth" in out
    assert (
        "postgresql://mlflow@127.0.0.1:5432/mlflow " in out
        and "postgresql://mlflow@127.0.0.1:5432/mlflow_auth" in out
    )
    assert "secret" not in out, "a password on the command line"
    out = _dry_run(
        tmp_path,
        HOST="10.0.1.23",
        AUTH="0",
        ARTIFACTS_DESTINATION="s3://b/p",
        BACKEND_STORE_URI="postgresql://u@db:5432/mlflow",
    )
    assert "--artifacts-destination s3://b/p" in out and "--app-name" not in out
    assert "postgresql://u@db:5432/mlflow" in out and "MLFLOW_TRACKING_URI=http://10.0.1.23:5000" in out


# ----------------------------------------------------------------------------- docs
def test_every_placeholder_is_explained_in_the_docs():
    placeholders = set(re.findall(r"[\w-]*REPLACE_ME[\w-]*", CLUSTER_YAML.read_text()))
    assert placeholders, "cluster.yaml should mark the values to replace with REPLACE_ME"
    docs = DOCS.read_text()
    missing = sorted(p for p in placeholders if p not in docs)
    assert not missing, f"docs/cluster.md does not explain {missing}"


def test_docs_say_how_to_make_every_secret_file():
    docs = DOCS.read_text()
    for name in ["auth_token", *MLFLOW_SECRETS.values()]:
        assert f"~/.asc-ray/cluster-auth/{name}" in docs, f"docs/cluster.md does not say how to make {name}"


def test_docs_sections():
    docs = DOCS.read_text()
    for needle in (
        "ray up cluster.yaml",
        "ray dashboard cluster.yaml",
        "RAY_AUTH_TOKEN",
        "~/.ray/auth_token",
        "Comparing students in the MLflow UI",
        "tags.role = 'student'",
        "Cost and time estimate",
        "bench/",
    ):
        assert needle in docs, f"docs/cluster.md lacks {needle!r}"
