#!/usr/bin/env bash
# Writes constraints.txt: the exact version of every package that asc-ray and its dev extras need, for
# Python 3.11 on Linux x86_64 (the Docker image and CI). CI (scripts/setup_venv.sh) and docker/Dockerfile
# install with `pip install -c constraints.txt ...`, so a rebuild gets the versions that were tested.
#
#   bash scripts/lock.sh                         # after editing dependencies in pyproject.toml
#   bash scripts/lock.sh --upgrade               # move every package to its newest allowed version
#   bash scripts/lock.sh --upgrade-package mlflow
#
# Versions already in constraints.txt are kept where pyproject.toml still allows them (uv prefers the
# output file's pins), so adding one dependency moves nothing else. Needs uv (in the dev extras; any
# `uv` on PATH, or UV=/path/to/uv, works too). It reads PyPI only, never this machine's pip settings.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${ASC_RAY_VENV:-$root/.venv}
uv=${UV:-}
if [ -z "$uv" ]; then
  if [ -x "$venv/bin/uv" ]; then uv=$venv/bin/uv; else uv=$(command -v uv || true); fi
fi
[ -n "$uv" ] || { echo "[lock] uv not found: bash scripts/setup_venv.sh (dev extras) or pip install uv" >&2; exit 1; }
exec "$uv" pip compile pyproject.toml --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --no-config \
  --custom-compile-command "bash scripts/lock.sh" \
  --quiet --output-file constraints.txt "$@"
