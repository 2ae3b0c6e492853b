#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one prepared run for a lent device machine (see the
# device tool's README): the image there has torch but not our other dependencies, which travel
# as wheels in .whl/ (Python 3.12; name .whl in the run's carry). Steps run most important
# first; each has its own time limit, capped by what is left of GPU_CHECK_BUDGET_S (default
# 480 s), so the whole script ends inside one device call; a failed step does not stop the
# next. Everything lands in $OUT (default results/gpu_check), at most five files:
# steps.log (every step's full output), gpu_feature_pass.json (copy it to
# results/benchmarks/), mnist_summary.json, mnist_evaluated.csv, summary.txt (the table
# printed last).
#
#   1. resnet152_e2e: benchmarks/bench_gpu_feature_pass.py --part e2e: resnet152_cifar10 with a
#      given checkpoint end to end in process (60,000 CIFAR-shaped samples), phase by phase,
#      twice (the target is <= 20 s), then the preparation alone with eval in tf32,
#      everything in bf16, and heads trained in batches of 1024;
#   2. resnet152_cli: the same run as `python -m search` in a subprocess (imports included);
#   3. inference: the floor (plain bf16 inference, channels-last), plain tf32 and IEEE fp32,
#      the bf16 feature pass, and how far tf32 / bf16 features are from fp32 ones;
#   4. mnist_default and mnist_evaluate: the MNIST default end to end with device=auto (-> cuda),
#      then the real early-exit network on the GPU against the proxy on val;
#   5. pytest_gpu: the feature, head, table, backbone, runtime and evaluate tests with the GPU
#      visible (the GPU comparisons in them run only there);
#   6. compile: torch.compile of the backbone, compile time against what it saves per pass.
#
# GPU_CHECK_SMOKE=1 runs every step tiny on a CPU (with the project's own environment, no
# wheels), to check the script before spending device time on it.
set -u
OUT=${OUT:-results/gpu_check}
SMOKE=${GPU_CHECK_SMOKE:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
WORK=${GPU_CHECK_WORKDIR:-/tmp/gpu-check}
START=$SECONDS
mkdir -p "$OUT" "$WORK/logs"
LOG="$OUT/steps.log"
JSON="$OUT/gpu_feature_pass.json"
: >"$LOG"
rm -f "$JSON" "$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
BENCH=(python3 benchmarks/bench_gpu_feature_pass.py --out "$JSON" --workdir "$WORK/r152")
MNIST=()
if [ "$SMOKE" = 1 ]; then
  BENCH+=(--smoke)
  MNIST=(search.budget=200 device=cpu)
elif [ -d .whl ]; then
  t0=$SECONDS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  echo "wheels installed in $((SECONDS - t0)) s" | tee -a "$LOG"
fi
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, optuna, pymoo, hydra, plotly; print('torch', torch.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; } 2>&1 | tee -a "$LOG"

STEPS=()
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START) - 20))
  if [ "$left" -lt 30 ]; then
    STEPS+=("step $name: skipped, the budget of $BUDGET s is spent")
    echo "${STEPS[-1]}" | tee -a "$LOG"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  local rc=$?
  STEPS+=("step $name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)")
  { echo "===== ${STEPS[-1]}: $*"; cat "$WORK/logs/$name.log"; } >>"$LOG"
  echo "${STEPS[-1]}"
  tail -n 4 "$WORK/logs/$name.log"
}

step resnet152_e2e 200 "${BENCH[@]}" --part e2e
step resnet152_cli 90 "${BENCH[@]}" --part cli
step inference 120 "${BENCH[@]}" --part inference

RUN=$WORK/mnist-run
step mnist_default 90 python3 -m search "hydra.run.dir=$RUN" "cache_dir=$WORK/mnist-cache" \
  "${MNIST[@]}"
cp "$RUN/summary.json" "$OUT/mnist_summary.json" 2>/dev/null
step mnist_evaluate 60 python3 -m search.deploy.evaluate "$RUN"
cp "$RUN/evaluated.csv" "$OUT/mnist_evaluated.csv" 2>/dev/null

TESTS=()
for t in tests/evaluators/test_{features,feature_precision,heads,head_stacking,tables}.py \
  tests/evaluators/test_{backbone,npy_stream}.py; do [ -f "$t" ] && TESTS+=("$t"); done
while IFS= read -r t; do TESTS+=("$t"); done < <(find tests/search -name test_runtime.py \
  -o -name test_evaluate.py | sort)
XDIST=()
python3 -c "import xdist" 2>/dev/null && [ "$SMOKE" != 1 ] && XDIST=(-n 4)
step pytest_gpu 120 python3 -m pytest -q -m "not slow" -p no:cacheprovider "${XDIST[@]}" \
  "${TESTS[@]}"
step compile 180 "${BENCH[@]}" --part compile

{ echo
  for line in "${STEPS[@]}"; do echo "$line"; done
  echo "total $((SECONDS - START)) s of a $BUDGET s budget"
  [ -f "$JSON" ] && python3 benchmarks/bench_gpu_feature_pass.py --part summary --out "$JSON"
} 2>&1 | tee "$OUT/summary.txt"
