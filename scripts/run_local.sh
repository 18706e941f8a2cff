#!/usr/bin/env bash
# The README's main command: set up (or reuse) the venv, then run the whole pipeline on this machine's CPU.
#   DATA_DIR=...    your TAU22 development set; unset = a synthetic dataset in the TAU layout (made once)
#   OUTPUT_DIR=...  default outputs/local
#   PROFILE=...     smoke (default: minutes on a laptop) or full (the report's settings)
# Extra arguments go to jobs/full_pipeline.py (e.g. --splits 25,100, --fresh, bcbl.epochs=20).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -n "${DATA_DIR:-}" ] && [ -z "${PROFILE:-}" ]; then
  # a user with real data most likely wants the report's numbers: say first what this run is, and is not
  echo "[run_local] PROFILE not set: running the SMOKE profile (small models, few epochs: minutes, not comparable"
  echo "[run_local] with the report's Table 3). For the report's settings run: PROFILE=full DATA_DIR=$DATA_DIR bash scripts/run_local.sh"
fi
bash scripts/setup_venv.sh
py=${ASC_RAY_VENV:-$root/.venv}/bin/python
data=${DATA_DIR:-}
if [ -z "$data" ]; then
  data=$root/data/synthetic
  if [ ! -f "$data/meta.csv" ]; then
    echo "[run_local] no DATA_DIR given: generating a synthetic dataset in the TAU layout at $data"
    rm -rf "$data"
    "$py" -m asc_ray.data.synth --out "$data"
  else
    echo "[run_local] no DATA_DIR given: reusing the synthetic dataset at $data"
  fi
fi
out=${OUTPUT_DIR:-$root/outputs/local}
# the store is the output dir's unless MLFLOW_TRACKING_URI names one (asc_ray/mlflow_store.py); the UI on it
# afterwards: .venv/bin/asc-ray mlflow-ui --output-dir "$out"
echo "[run_local] pipeline: data $data -> $out (profile ${PROFILE:-smoke}$([ -z "${PROFILE:-}" ] && echo ": this script's default, PROFILE=full for the report's settings")); MLflow store: ${MLFLOW_TRACKING_URI:-sqlite:///$out/mlflow.db}"
exec "$py" jobs/full_pipeline.py --data-dir "$data" --output-dir "$out" --profile "${PROFILE:-smoke}" "$@"
