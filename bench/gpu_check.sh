#!/usr/bin/env bash
# Every GPU check at once, for a machine with one GPU at hand (minutes; the figures go to docs/benchmarks.md):
#   1. the GPU-only tests (the prefetching batch path on CUDA);
#   2. bench/gpu_throughput.py: the real training path's samples/s (student alone, without prefetch, four
#      students sharing the GPU, the 32-BCBL and PaSST teachers) on a generated synthetic set;
#   3. a one-split pipeline with use_gpu=true on that set (full profile, few epochs, random-init PaSST):
#      Ray Train teachers and Ray Tune students on the GPU, MLflow in a SQLite store.
#     bash bench/gpu_check.sh OUT_DIR        (python: $PYTHON, default python3)
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
work=$(mktemp -d /tmp/asc_gpu_check.XXXX)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch, ray, mlflow; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__, 'mlflow', mlflow.__version__)" | tee -a "$out/gpu.txt"

echo "== 1. GPU tests"
"$py" -m pytest -q -p no:cacheprovider tests/data/test_dataset.py -k cuda 2>&1 | tail -5 | tee "$out/gpu_tests.txt"

echo "== 2. bench/gpu_throughput.py"
timeout "${BENCH_TIMEOUT:-900}" "$py" bench/gpu_throughput.py --work-dir "$work/bench" 2>&1 | tee "$out/gpu_throughput.txt"

echo "== 3. one-split pipeline, use_gpu=true"
t0=$(date +%s)
mkdir -p "$work/pipe"
MLFLOW_TRACKING_URI="sqlite:///$work/pipe/mlflow.db" timeout "${PIPELINE_TIMEOUT:-1800}" "$py" jobs/full_pipeline.py \
  --data-dir "$work/bench/data" --output-dir "$work/pipe" --profile full --splits 5 \
  use_gpu=true bcbl.epochs=3 passt.epochs=2 passt.pretrained=false teachers.gpus_per_worker=0.5 \
  2>&1 | tee "$out/pipeline.log" | grep -v "^\s*$" | grep -E "asc-ray|Error|error" | tail -60
echo "pipeline rc ${PIPESTATUS[0]} wall $(( $(date +%s) - t0 ))s"
cp "$work/pipe/results.md" "$work/pipe/plots/timeline.png" "$out/" 2>/dev/null
grep -h "training on" "$work"/pipe/*/split5/*/unit.log 2>/dev/null | tee "$out/unit_devices.txt"
