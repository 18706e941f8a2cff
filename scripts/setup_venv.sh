#!/usr/bin/env bash
# Makes (or reuses) the project venv at $ASC_RAY_VENV (default .venv) and installs asc-ray with its
# dev extras at the versions in constraints.txt (the same file docker/Dockerfile installs with; made by
# scripts/lock.sh). Re-installs only when pyproject.toml or constraints.txt changed since the last
# install (stamp file), so the README commands cost seconds after the first run (a fresh install is
# ~3 min and ~6.5 GB).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${ASC_RAY_VENV:-$root/.venv}
py=${PYTHON:-python3}
stamp=$venv/.asc_ray_installed
constraints=$root/constraints.txt
want=$(cat "$root/pyproject.toml" "$constraints" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating venv at $venv ($($py --version))"
  "$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing asc-ray and its dependencies into $venv (first time: ~3 minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c "$constraints" -e "$root[dev]"
  echo "$want" > "$stamp"
else
  echo "[setup] reusing $venv (dependencies up to date)"
fi
