#!/usr/bin/env bash
# One prepared run of every check that needs a CUDA GPU, for a lent device machine (see the
# device tool's README): the image there has torch but not our other dependencies, which travel
# as wheels in .whl/ (Python 3.12). Each step has its own time limit and log; a failed step
# does not stop the next. Logs and result files go to $OUT (default: results/gpu_check).
#
#   1. the MNIST default end to end with device=auto (-> cuda): mixed-precision feature pass,
#      heads trained on the GPU, search, report; then `python -m search.deploy.evaluate` runs the real
#      early-exit network on the GPU and compares it with the proxy on val;
#   2. benchmarks/bench_gpu_feature_pass.py: the CIFAR ResNet-152 feature pass over 60,000
#      CIFAR-shaped samples against plain inference, and the resnet152_cifar10 search time;
#   3. the non-slow evaluator and runtime tests with the GPU visible.
set -u
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, optuna, pymoo, hydra, plotly; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "step $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 25 "$OUT/$name.log"
}

RUN=/tmp/gpu-check/mnist-run
step mnist_default 90 python3 -m search "hydra.run.dir=$RUN" cache_dir=/tmp/gpu-check/cache
cp "$RUN/summary.json" "$OUT/mnist_summary.json" 2>/dev/null
step mnist_evaluate 45 python3 -m search.deploy.evaluate "$RUN"
cp "$RUN/evaluated.csv" "$OUT/mnist_evaluated.csv" 2>/dev/null
step bench_resnet152 330 python3 benchmarks/bench_gpu_feature_pass.py
cp results/benchmarks/gpu_feature_pass.json "$OUT/" 2>/dev/null
step pytest_gpu 60 python3 -m pytest -q -m "not slow" -p no:cacheprovider \
  tests/evaluators/test_features.py tests/evaluators/test_heads.py tests/evaluators/test_tables.py \
  tests/evaluators/test_backbone.py tests/search/deploy/test_runtime.py tests/search/deploy/test_evaluate.py
