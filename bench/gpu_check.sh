#!/usr/bin/env bash
# Every GPU check at once, for a machine with one GPU at hand; fits a 10-minute call (each step has its own
# timeout; the figures go to docs/benchmarks.md, "Training on a GPU"):
#   1. the GPU-only tests (the prefetching batch path on CUDA);
#   2. bench/gpu_throughput.py: samples/s of the real training path per model (student, 32-BCBL teacher,
#      PaSST-S teacher) with every speed switch off, each alone, the defaults and all on; four students sharing
#      the GPU; on a generated synthetic set;
#   3. bench/gpu_chain.py: split 100's critical path (teacher -> table -> kd_ensemble -> table -> tfs) unit by
#      unit, full profile with few epochs, switches off and all on, and its extrapolation to 150 epochs;
#   4. with FULL=1 only (minutes more): a one-split Ray pipeline with use_gpu=true (teachers on Ray Train,
#      students on Ray Tune, MLflow in SQLite).
#     bash bench/gpu_check.sh OUT_DIR        (python: $PYTHON, default python3)
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
work=$(mktemp -d /tmp/asc_gpu_check.XXXX)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch, ray, mlflow; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__, 'mlflow', mlflow.__version__)" | tee -a "$out/gpu.txt"
date -u +%FT%TZ | tee -a "$out/gpu.txt"

echo "== 1. GPU tests"
timeout 90 "$py" -m pytest -q -p no:cacheprovider tests/data/test_dataset.py -k cuda 2>&1 | tail -5 | tee "$out/gpu_tests.txt"

echo "== 2. bench/gpu_throughput.py (switches off / each / all)"
timeout "${BENCH_TIMEOUT:-300}" "$py" bench/gpu_throughput.py --work-dir "$work/bench" --epochs 3 \
  --variants off,amp,compile,device_augment,today,all --passt-variants off,today,all \
  2>&1 | tee "$out/gpu_throughput.txt" | grep -vE "^\s+\S+ \S+ epoch "

echo "== 3. bench/gpu_chain.py (split 100's chain: off, then all switches)"
for v in off all; do
  if [ "$v" = all ]; then sw="train.compile=reduce-overhead train.amp=true train.device_augment=true"; else sw="train.compile=false train.amp=false train.device_augment=false"; fi
  # shellcheck disable=SC2086
  timeout "${CHAIN_TIMEOUT:-100}" "$py" bench/gpu_chain.py --data-dir "$work/bench/data" --split 100 --epochs 3 \
    --work-dir "$work/chain_$v" $sw 2>&1 | tee "$out/gpu_chain_$v.txt" | grep -E "_s |samples/s|chain"
done

if [ "${FULL:-0}" = 1 ]; then
  echo "== 4. one-split pipeline, use_gpu=true"
  t0=$(date +%s)
  mkdir -p "$work/pipe"
  MLFLOW_TRACKING_URI="sqlite:///$work/pipe/mlflow.db" timeout "${PIPELINE_TIMEOUT:-600}" "$py" jobs/full_pipeline.py \
    --data-dir "$work/bench/data" --output-dir "$work/pipe" --profile full --splits 5 \
    use_gpu=true bcbl.epochs=3 passt.epochs=2 passt.pretrained=false teachers.gpus_per_worker=0.5 \
    2>&1 | tee "$out/pipeline.log" | grep -E "asc-ray|Error|error" | tail -60
  echo "pipeline rc ${PIPESTATUS[0]} wall $(( $(date +%s) - t0 ))s"
  cp "$work/pipe/results.md" "$work/pipe/plots/timeline.png" "$out/" 2>/dev/null
fi
rm -rf "$work"
