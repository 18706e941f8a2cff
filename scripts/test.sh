#!/usr/bin/env bash
# The README's test command: set up (or reuse) the venv, then run the test suite in it.
# Default: the fast suite (tests marked `slow` excluded). `bash scripts/test.sh -m slow` runs the heavier
# integration tests (real Ray runtime, ray job submit, multi-node); any pytest arguments work.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup_venv.sh
exec "${ASC_RAY_VENV:-$root/.venv}/bin/python" -m pytest "$@"
