"""Re-vendor the KubeRay CRD schemas that tests/cluster/test_k8s_manifests.py validates against.

    git clone https://github.com/ray-project/kuberay /tmp/kuberay      # or an existing clone
    python docker/k8s/schemas/vendor_crds.py /tmp/kuberay v1.7.0

For each CRD it reads `helm-chart/kuberay-operator/crds/ray.io_<plural>.yaml` at that tag (what
`helm install kuberay-operator` installs), takes the `v1` version's `openAPIV3Schema` unchanged except
that the `description` texts are dropped (they are most of the 2.3 MB), and writes
`ray.io_<plural>.v1.json` beside this file. Update the table in README.md with the printed lines.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = ("rayclusters", "rayjobs")
UPSTREAM = "helm-chart/kuberay-operator/crds/ray.io_{}.yaml"


def strip_descriptions(schema):
    """The schema without `description` keywords; a property *named* description is kept."""
    if isinstance(schema, list):
        return [strip_descriptions(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties":  # a mapping of names to schemas: names are data, not keywords
            out[key] = {name: strip_descriptions(s) for name, s in value.items()}
        else:
            out[key] = strip_descriptions(value)
    return out


def main(repo: str, tag: str) -> None:
    commit = subprocess.run(
        ["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], check=True, capture_output=True, text=True
    ).stdout.strip()
    for plural in CRDS:
        path = UPSTREAM.format(plural)
        text = subprocess.run(
            ["git", "-C", repo, "show", f"{tag}:{path}"], check=True, capture_output=True, text=True
        ).stdout
        crd = yaml.safe_load(text)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
        out = HERE / f"ray.io_{plural}.v1.json"
        out.write_text(json.dumps(schema, indent=0, sort_keys=True) + "\n")
        upstream_sha = hashlib.sha256(text.encode()).hexdigest()
        vendored_sha = hashlib.sha256(out.read_bytes()).hexdigest()
        print(f"| `{out.name}` | `{path}` at {tag} ({commit}) | `{upstream_sha}` | `{vendored_sha}` |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
