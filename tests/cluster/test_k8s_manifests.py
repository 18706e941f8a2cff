"""docker/k8s, the KubeRay manifests, checked offline (no Kubernetes cluster, no network).

- Every document validates strictly (a field the schema does not name is an error, as with kubectl's
  default --validate=strict): Kubernetes kinds against the OpenAPI schemas that kubernetes-validate ships,
  RayCluster / RayJob against the KubeRay CRD schemas vendored in docker/k8s/schemas (version in its
  README), and the pod templates inside them against Kubernetes' PodTemplate as well.
- What no schema knows: a head with num-cpus "0", GPU worker groups that fit what the job asks for (as Ray's
  own KubeRay autoscaler reads them), the ReadWriteMany claim at one path on every pod and a node-local
  ASC_RAY_CACHE_DIR, token auth from a Secret on every Ray container, the env vars asc_ray reads, no
  credentials in the repository, MLflow with basic-auth on PostgreSQL, and a RayJob that runs the documented
  `ray job submit` command.
- Pre-flight's shared-storage checks, run unchanged on the manifests' paths (re-rooted under a temp dir).
"""

from __future__ import annotations

import configparser
import copy
import fnmatch
import hashlib
import json
import re
import shlex
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
SCHEMAS = K8S / "schemas"
README = K8S / "README.md"
DOCS = ROOT / "docs" / "cluster.md"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")

KUBERAY = "v1.7.0"  # the KubeRay release whose CRD schemas are vendored (schemas/README.md)
CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.v1.json",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.v1.json",
}
KUBERNETES_VALIDATE = "1.37.0"  # the package that ships Kubernetes' schemas for offline use
K8S_VERSIONS = ("1.30", "1.37")  # the oldest Kubernetes the manifests are meant for, and the newest known

SHARED_CLAIM = "asc-ray-shared"
RAY_LOGIN = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
MLFLOW_LOGIN = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
# Env vars asc_ray reads that a deployment need not set: opt-in switches (the package has no test hooks: the
# tests' own switches live in tests/)
OPTIONAL_ENV = {"ASC_RAY_WORKER_LOGS"}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|_KEY$", re.I)


# ----------------------------------------------------------------------------- reading the manifests
@cache
def docs_in(path: Path) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d)


def all_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in MANIFESTS for d in docs_in(p)]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in all_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in docker/k8s, found {len(found)}"
    return found[0]


def raycluster() -> dict:
    return one("RayCluster")


def rayjob() -> dict:
    return one("RayJob")


def ray_pods() -> dict[str, dict]:
    """Pod spec of each Ray node group: the head and every worker group."""
    spec = raycluster()["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]})
    return pods


def submitter_pod() -> dict:
    return rayjob()["spec"]["submitterPodTemplate"]["spec"]


def mlflow_pod() -> dict:
    return one("Deployment", "asc-ray-mlflow")["spec"]["template"]["spec"]


def first_container(pod: dict) -> dict:
    return pod["containers"][0]  # KubeRay: the Ray container is the first one


def env_of(container: dict) -> dict[str, dict]:
    """The container's environment, name -> {"value": ...} or {"valueFrom": ...}, with envFrom ConfigMaps
    resolved from the manifests (an `env` entry wins over envFrom, as in Kubernetes)."""
    env: dict[str, dict] = {}
    for src in container.get("envFrom", []):
        assert "configMapRef" in src, f"unexpected envFrom {src}"
        cm = one("ConfigMap", src["configMapRef"]["name"])
        env.update({k: {"value": v} for k, v in cm["data"].items()})
    env.update({e["name"]: {k: v for k, v in e.items() if k != "name"} for e in container.get("env", [])})
    return env


def value(env: dict[str, dict], name: str) -> str:
    assert "value" in env.get(name, {}), f"{name} has no plain value"
    return env[name]["value"]


def shared_mount() -> str:
    """Where the head mounts the shared claim: every other pod must use the same path."""
    return claim_mounts(ray_pods()["head"])[0]


def claim_mounts(pod: dict, claim: str = SHARED_CLAIM) -> list[str]:
    vols = {
        v["name"]
        for v in pod.get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    mounts = [m for m in first_container(pod).get("volumeMounts", []) if m["name"] in vols]
    assert all(not m.get("subPath") for m in mounts), "the shared claim is mounted whole, not a subPath"
    return [m["mountPath"] for m in mounts]


def under(path: str | Path, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(folder)


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from walk(child)


# ----------------------------------------------------------------------------- reading the docs
def submit_commands(text: str) -> list[list[str]]:
    """Every `ray job submit` command in the fenced shell blocks of a markdown text, as argv."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if re.match(r"\s*ray job submit\b", line):
                out.append(shlex.split(line, comments=True))
    return out


def split_submit(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """(`ray job submit`'s options, the entrypoint after `--`)."""
    sep = argv.index("--")
    words, opts = argv[3:sep], {}
    while words:
        w = words.pop(0)
        if "=" in w:
            k, v = w.split("=", 1)
            opts[k] = v
        elif w in ("--no-wait", "--verify", "--disable-usage-stats"):
            opts[w] = True
        else:
            opts[w] = words.pop(0)
    return opts, argv[sep + 1 :]


def cli_options(words: list[str]) -> dict[str, str | bool]:
    """`--key=value`, `--key value` and `--flag` words of a command line."""
    opts, i = {}, 0
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" in w:
            k, v = w.split("=", 1)
            opts[k] = v
        elif w.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            opts[w] = words[i + 1]
            i += 1
        else:
            opts[w] = True
        i += 1
    return opts


def entrypoint() -> list[str]:
    return shlex.split(rayjob()["spec"]["entrypoint"])


@cache
def entrypoint_config():
    """The RayJob's entrypoint as jobs/full_pipeline.py parses it: (arguments, resolved config)."""
    from asc_ray.cli.jobs import parse

    words = entrypoint()
    assert words[:2] == ["python", "jobs/full_pipeline.py"], words
    return parse(words[2:], "k8s")


def runtime_env() -> dict:
    return yaml.safe_load(rayjob()["spec"].get("runtimeEnvYAML") or "") or {}


def readme_secrets() -> dict[str, dict[str, str]]:
    """Secrets the README creates: name -> {key: the literal's shell text}."""
    out = {}
    text = README.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "create secret generic" not in line:
            continue
        words = line.split()  # the values are $(...) substitutions: keep their shell text
        name = words[words.index("generic") + 1]
        out[name] = dict(
            w.split("=", 1)[1].split("=", 1)
            for w in words
            if w.startswith(("--from-literal=", "--from-file="))
        )
    return out


# ----------------------------------------------------------------------------- schemas
def strict(schema):
    """A CRD schema the way the API server applies it under kubectl's default --validate=strict: fields the
    schema does not name are errors, not silently pruned."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: ({n: strict(s) for n, s in v.items()} if k == "properties" else strict(v))
        for k, v in schema.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str):
    import jsonschema

    schema = strict(json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text()))
    jsonschema.Draft4Validator.check_schema(schema)  # OpenAPI v3.0 schemas: draft 4's keywords
    return jsonschema.Draft4Validator(schema)


def pod_templates(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        out = [spec["submitterPodTemplate"]] if "submitterPodTemplate" in spec else []
        spec = spec.get("rayClusterSpec") or {}
        if not spec:
            return out
    else:
        out = []
    return (
        out + [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    )


def schema_errors(doc: dict, kv) -> list[str]:
    """What validating `doc` against its schema(s) reports; [] when it is valid."""
    errors = []
    if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
        v = crd_validator(doc["apiVersion"], doc["kind"])
        errors += [f"{'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(doc)]
        # the embedded pod templates (and the CR's metadata) against Kubernetes' own strict schemas
        docs = [
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": doc["metadata"], "template": t}
            for t in pod_templates(doc)
        ]
    else:
        docs = [doc]
    for d in docs:
        for version in K8S_VERSIONS:
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:
                errors.append(f"Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
    return errors


@pytest.fixture(scope="module")
def kv():
    return pytest.importorskip(
        "kubernetes_validate",
        minversion=KUBERNETES_VALIDATE,
        reason=f"no Kubernetes schemas to validate against: pip install kubernetes-validate=={KUBERNETES_VALIDATE}",
    )


@pytest.mark.parametrize(
    "name, doc",
    [(name, doc) for name, doc in all_docs()],
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in all_docs()],
)
def test_manifest_validates_against_its_schema(kv, name, doc):
    errors = schema_errors(doc, kv)
    assert not errors, f"{name}: {doc['kind']} {doc['metadata']['name']}:\n" + "\n".join(errors)


def test_schema_checks_catch_broken_manifests(kv):
    """The validation is live: a wrong type, a misspelt field in a CRD, in a pod template inside it and in a
    core kind are each reported."""
    rc = raycluster()
    broken = copy.deepcopy(rc)
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert schema_errors(broken, kv)
    broken = copy.deepcopy(rc)
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert schema_errors(broken, kv)
    broken = copy.deepcopy(rc)
    first_container(broken["spec"]["headGroupSpec"]["template"]["spec"])["volumeMount"] = []
    assert schema_errors(broken, kv)
    broken = copy.deepcopy(one("Deployment", "asc-ray-mlflow"))
    broken["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["nam"] = "x"
    assert schema_errors(broken, kv)


def test_vendored_crd_schemas_are_the_ones_recorded():
    """schemas/README.md names the KubeRay release and the sha256 of each vendored file."""
    readme = (SCHEMAS / "README.md").read_text()
    assert KUBERAY in readme
    for name in CRD_SCHEMAS.values():
        digest = hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()
        assert f"`{name}`" in readme and digest in readme, (
            f"{name}: sha256 {digest} is not in schemas/README.md"
        )


def test_kustomization_applies_everything_but_the_job():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "rayjob.yaml")
    namespaces = {d["metadata"].get("namespace") for _, d in all_docs() if d["kind"] != "Namespace"}
    assert namespaces == {one("Namespace")["metadata"]["name"]}, "every object in the one namespace"


# ----------------------------------------------------------------------------- the Ray cluster
def test_head_runs_no_tasks():
    head = raycluster()["spec"]["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert "nvidia.com/gpu" not in first_container(head["template"]["spec"])["resources"].get("limits", {})


def test_gpu_worker_groups_fit_what_the_job_asks_for():
    """Ray's own reading of the RayCluster (what the KubeRay autoscaler scales on) against what the RayJob's
    config asks for per teacher and per student trial: each lands on its own GPU group, never on the head."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    groups = raycluster()["spec"]["workerGroupSpecs"]
    for g in groups:
        limits = first_container(g["template"]["spec"])["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"worker group {g['groupName']} has no GPU"
        assert not (
            {"num-cpus", "num-gpus", "memory", "resources"} & set(g["rayStartParams"]) and g.get("resources")
        )
    types = _derive_autoscaling_config_from_ray_cr(copy.deepcopy(raycluster()))["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    _, cfg = entrypoint_config()
    t, s = cfg.teachers, cfg.students
    asks = {
        "teachers": {"CPU": t.cpus_per_worker, "GPU": t.gpus_per_worker, **t.resources},
        "students": {"CPU": s.cpus_per_trial, "GPU": s.gpus_per_trial, **s.resources},
    }
    for group, ask in asks.items():
        fits = [n for n, nt in types.items() if all(nt["resources"].get(k, 0) >= v for k, v in ask.items())]
        assert fits == [group], f"{group} ask {ask}: fits node types {fits}"
    per_pod = min(types["students"]["resources"][k] / v for k, v in asks["students"].items())
    assert per_pod >= 4, f"a students pod fits {per_pod} trials, the docs promise four per GPU"


def test_shared_claim_at_one_path_and_a_node_local_cache():
    pvc = one("PersistentVolumeClaim", SHARED_CLAIM)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mount = shared_mount()
    pods = {**ray_pods(), "submitter": submitter_pod(), "mlflow": mlflow_pod()}
    for where, pod in pods.items():
        assert claim_mounts(pod) == [mount], f"{where}: the shared claim must be mounted at {mount}"
    for where, pod in ray_pods().items():
        cache_dir = value(env_of(first_container(pod)), "ASC_RAY_CACHE_DIR")
        mounts = [m for m in first_container(pod)["volumeMounts"] if under(cache_dir, m["mountPath"])]
        assert mounts, f"{where}: ASC_RAY_CACHE_DIR={cache_dir} is on no volume"
        vol = next(
            v for v in pod["volumes"] if v["name"] == max(mounts, key=lambda m: len(m["mountPath"]))["name"]
        )
        assert "emptyDir" in vol or "hostPath" in vol, f"{where}: {cache_dir} is not on the node's own disk"
        assert vol.get("emptyDir", {}).get("medium") != "Memory", f"{where}: a waveform cache in RAM"


def test_token_auth_on_every_ray_container():
    auth = raycluster()["spec"]["authOptions"]
    assert auth["mode"] == "token" and not auth.get("enableK8sTokenAuth")
    token = {"secretKeyRef": {"name": auth["secretName"], "key": "auth_token"}}  # the key KubeRay reads
    containers = {g: first_container(p) for g, p in ray_pods().items()}
    containers["submitter"] = first_container(submitter_pod())
    for where, c in containers.items():
        env = env_of(c)
        assert value(env, "RAY_AUTH_MODE") == "token", where
        assert env.get("RAY_AUTH_TOKEN") == {"valueFrom": token}, f"{where}: RAY_AUTH_TOKEN from {token}"


def job_env_names() -> set[str]:
    """The deployment env vars asc_ray reads (os.environ names in its source)."""
    names = set()
    for py in (ROOT / "asc_ray").rglob("*.py"):
        names |= set(re.findall(r"[\"'](ASC_RAY_[A-Z0-9_]+|MLFLOW_TRACKING_URI)[\"']", py.read_text()))
    return {n for n in names if n not in OPTIONAL_ENV}


def test_every_ray_container_has_the_jobs_env():
    names = job_env_names()
    assert {"ASC_RAY_CACHE_DIR", "ASC_RAY_PASST_CHECKPOINT", "MLFLOW_TRACKING_URI"} <= names
    envs = {g: env_of(first_container(p)) for g, p in ray_pods().items()}
    for where, env in envs.items():
        missing = (names | MLFLOW_LOGIN | RAY_LOGIN) - set(env)
        assert not missing, f"{where}: {sorted(missing)} not set"
        assert env == envs["head"], f"{where}: another environment than the head's (the job driver's)"
    env = envs["head"]
    checkpoint = value(env, "ASC_RAY_PASST_CHECKPOINT")
    assert under(checkpoint, shared_mount()) and checkpoint in README.read_text(), "README downloads it there"
    uri = urlsplit(value(env, "MLFLOW_TRACKING_URI"))
    svc = one("Service", uri.hostname)
    assert uri.scheme == "http" and uri.port in [p["port"] for p in svc["spec"]["ports"]]
    for name in MLFLOW_LOGIN:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "asc-ray-mlflow-client"


def test_image_and_ray_version_are_the_projects():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    ray = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-", DOCKERFILE.read_text(), re.M).group(1)
    assert raycluster()["spec"]["rayVersion"] == ray
    pods = {**ray_pods(), "submitter": submitter_pod()}
    for where, pod in pods.items():
        assert first_container(pod)["image"] == f"REPLACE_ME_REGISTRY/asc-ray:{version}", where


def test_placeholders_are_documented():
    placeholders = set(re.findall(r"REPLACE_ME\w*", "".join(p.read_text() for p in MANIFESTS)))
    assert placeholders, "no REPLACE_ME left? then drop this test"
    readme = README.read_text()
    assert not [p for p in placeholders if f"`{p}`" not in readme], "README.md must say what each is"


# ----------------------------------------------------------------------------- credentials and MLflow
def test_no_credentials_in_the_manifests():
    for name, doc in all_docs():
        assert doc["kind"] != "Secret", f"{name}: Secrets are created with kubectl (README), never committed"
        for node in walk(doc):
            if isinstance(node, dict) and "name" in node and ("value" in node or "valueFrom" in node):
                if SECRET_NAME.search(node["name"]):
                    assert "secretKeyRef" in node.get("valueFrom", {}), (
                        f"{name}: {node['name']} not from a Secret"
                    )
            if isinstance(node, str):
                assert not re.search(r"[a-z+]+://[^/\s:@]+:[^/\s@]+@", node), f"{name}: a password in a URI"
                assert not re.search(r"(?im)^\s*\w*password\s*=", node), (
                    f"{name}: a password in a config file"
                )
    for name, keys in readme_secrets().items():
        for key, literal in keys.items():
            if SECRET_NAME.search(key.replace("-", "_")):
                assert literal.startswith('"$('), f"README: {name}/{key} must be generated, not written down"


def test_the_readme_creates_every_secret_the_manifests_use():
    used = {}
    for _, doc in all_docs():
        for node in walk(doc):
            if isinstance(node, dict) and "secretKeyRef" in node:
                used.setdefault(node["secretKeyRef"]["name"], set()).add(node["secretKeyRef"]["key"])
    used.setdefault(raycluster()["spec"]["authOptions"]["secretName"], set()).add("auth_token")
    created = {name: set(keys) for name, keys in readme_secrets().items()}
    assert created == used


def test_mlflow_server_runs_basic_auth_on_postgres():
    c = first_container(mlflow_pod())
    argv = c["command"] + c["args"]
    assert argv[:2] == ["mlflow", "server"]
    opts = cli_options(argv[2:])
    assert opts.get("--app-name") == "basic-auth" and opts.get("--serve-artifacts") is True
    assert under(opts["--artifacts-destination"], shared_mount())
    env = env_of(c)
    # both databases (runs; the auth app's users) on the PostgreSQL Service, password from PGPASSWORD
    auth_ini = configparser.ConfigParser()
    ini_path = PurePosixPath(value(env, "MLFLOW_AUTH_CONFIG_PATH"))
    ini_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(ini_path.parent))
    ini_cm = next(v for v in mlflow_pod()["volumes"] if v["name"] == ini_mount["name"])["configMap"]["name"]
    auth_ini.read_string(one("ConfigMap", ini_cm)["data"][ini_path.name])
    postgres = one("StatefulSet", "asc-ray-postgres")
    pg_env = env_of(first_container(postgres["spec"]["template"]["spec"]))
    for uri in (opts["--backend-store-uri"], auth_ini["mlflow"]["database_uri"]):
        u = urlsplit(uri)
        assert u.scheme.split("+")[0] == "postgresql" and u.password is None, uri
        assert u.username == value(pg_env, "POSTGRES_USER")
        assert u.port in [p["port"] for p in one("Service", u.hostname)["spec"]["ports"]]
    assert env["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"]
    assert "admin_password" not in auth_ini["mlflow"]
    for name in (
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        assert "secretKeyRef" in env[name].get("valueFrom", {}), name
    # the address the Ray pods use passes the server's Host check (mlflow.server.security_utils: fnmatch)
    host = urlsplit(value(env_of(first_container(ray_pods()["head"])), "MLFLOW_TRACKING_URI")).netloc
    allowed = opts["--allowed-hosts"].split(",")
    assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), (host, allowed)


# ----------------------------------------------------------------------------- the job
def test_rayjob_runs_the_documented_ray_job_submit_command():
    """The RayJob's entrypoint is, word for word, what `ray job submit ... -- <entrypoint>` runs in the
    README (and in any page that documents the KubeRay command), and its runtime env is that command's:
    the working dir (the README's checkout, here the copy on the shared volume) and the same env_vars."""
    job, entry, renv = rayjob(), entrypoint(), runtime_env()
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster()["metadata"]["name"]}
    assert job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"  # clusterSelector needs it
    assert set(renv) <= {"working_dir", "env_vars"}
    mount = shared_mount()
    pages = [README, DOCS]
    checked = []
    for page in (p for p in pages if p.exists()):
        for argv in submit_commands(page.read_text()):
            if not any(mount in w for w in argv):
                continue  # a cluster-launcher command (cluster.yaml's paths), not the KubeRay one
            opts, cmd = split_submit(argv)
            assert cmd == entry, f"{page.name}: `ray job submit -- {shlex.join(cmd)}` is not the RayJob's"
            assert opts.get("--working-dir") == "." and "working_dir" in renv, page.name
            doc_env = json.loads(opts.get("--runtime-env-json", "{}")).get("env_vars", {})
            assert renv.get("env_vars", {}) == doc_env, page.name
            checked.append(page.name)
    assert README.name in checked, "README.md documents no `ray job submit` with the shared volume's paths"
    assert under(renv["working_dir"], mount) and renv["working_dir"] in README.read_text()


def test_entrypoint_paths_are_on_the_shared_volume():
    args, cfg = entrypoint_config()  # also: jobs/full_pipeline.py accepts every option and override
    mount = shared_mount()
    for what, path in (
        ("--data-dir", args.data_dir),
        ("--output-dir", args.output_dir),
        ("storage_path", cfg.storage_path),
    ):
        assert under(path, mount), f"{what}={path} is not on the shared volume ({mount})"


def test_same_job_as_the_cluster_launchers():
    """The KubeRay job runs what docs/cluster.md submits to cluster.yaml's cluster, on the shared volume's
    paths instead of EFS's, plus the Ray resources that keep each family on its worker group."""
    launcher = [a for a in submit_commands(DOCS.read_text()) if any("/mnt/efs/" in w for w in a)]
    if not launcher:
        pytest.skip("docs/cluster.md documents no `ray job submit` for cluster.yaml (paths under /mnt/efs)")
    _, cmd = split_submit(launcher[0])
    k8s = [w for w in entrypoint() if not re.match(r"(teachers|students)\.resources\.", w)]
    assert [w.replace("/mnt/efs/", shared_mount() + "/") for w in cmd] == k8s


# ----------------------------------------------------------------------------- pre-flight
def test_preflight_storage_checks_on_the_manifests_paths(tmp_path, monkeypatch):
    """cluster_folders / refuse_job_working_dir / write_tokens / unseen, unchanged, on the folders the RayJob
    uses: each under the shared mount, none refused from the job's working-dir copy, every token read back
    by a node that mounts the volume and none by a node that does not. This machine has no /mnt/shared, so
    each node's view of it is tmp_path/<the path>."""
    from asc_ray.pipeline.preflight import cluster_folders
    from asc_ray.pipeline.storage import refuse_job_working_dir, unseen, write_tokens

    args, cfg = entrypoint_config()
    uri = value(env_of(first_container(ray_pods()["head"])), "MLFLOW_TRACKING_URI")
    out, mount = Path(args.output_dir), shared_mount()
    job_copy = tmp_path / "tmp/ray/session_latest/runtime_resources/working_dir_files/_ray_pkg_0"
    job_copy.mkdir(parents=True)
    monkeypatch.chdir(job_copy)  # where the driver runs under the RayJob: its working_dir's copy
    job_config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0.zip"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job_config))

    folders = cluster_folders(cfg, out, uri, None)
    # the MLflow server holds the runs and artifacts: only the output dir and storage_path must be shared
    assert [f[0] for f in folders] == [out, Path(cfg.storage_path)]
    assert all(under(f[0], mount) for f in folders)
    refuse_job_working_dir(folders)

    def node_view(p: Path | str) -> Path:
        return tmp_path / Path(p).relative_to("/")

    local = [(node_view(f), what, why, fix) for f, what, why, fix in folders]
    shared = write_tokens(node_view(out), local)
    assert unseen(shared) == []  # a pod that mounts the volume reads every token back
    node_view(mount).rename(tmp_path / "elsewhere")  # a pod without the volume: an empty /mnt/shared
    assert unseen(shared) == shared  # ... is caught
