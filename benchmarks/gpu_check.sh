#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a device machine (see the device tool's
# README): the zero-tuning suite on the GPU, the test suite with the GPU present, and fit's
# overhead and the GPU/CPU crossover, each under its own time limit. The suite's fifteen
# workloads (session 14) are three parts, 3 seeds each (the CPU tables use 6: a 15-minute
# device budget holds about two parts); pick what the session needs.
#
#   From the repo root, on the device machine (its torch has CUDA; the peers' wheels travel):
#     bash benchmarks/gpu_check.sh suite      # the six MLP workloads (~4 min on an H200)
#     bash benchmarks/gpu_check.sh new        # the CNN, transformer, GRU and matrix
#                                             # factorization (~6 min: 66 + 135 + 80 + 75 s)
#     bash benchmarks/gpu_check.sh five       # session 14's five: linear and logistic
#                                             # regression, a 6-layer MLP, an LSTM, a bag of
#                                             # embeddings (126 s on an H200, session 17)
#     bash benchmarks/gpu_check.sh ddp        # tests/test_distributed.py alone (~2 min): on
#                                             # one GPU both gloo processes train on cuda:0
#                                             # (the CUDA paths: devices, per-rank CUDA random
#                                             # streams); NCCL needs a GPU per process, so N>1
#                                             # GPUs are needed to test the nccl backend itself
#     bash benchmarks/gpu_check.sh rest       # tests, fit overhead, crossover (~6-7 min)
#     bash benchmarks/gpu_check.sh            # the MLP suite and `rest` (over 10 minutes)
#   Logs and JSON land in $OUT (or ./gpu-out).
#
# Wheels: torch, pytest, pytest-xdist and scikit-learn are on the device image; plotext and the
# peers (schedulefree, prodigyopt, lion-pytorch) are not. Put py3 wheels in .whl/ (ignored by
# git) and carry it: they are installed with --no-deps into /tmp/site first.
set -uo pipefail
part="${1:-all}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$out/gpu.txt"

# 1. The zero-tuning suite on the GPU (descend vs tuned AdamW, 3 seeds): the six MLPs took
#    218 s on an H200 (session 11; launch-bound, ~1 ms a step). The JSON is written after every
#    workload, so a run cut at the limit keeps what it finished.
suite() {
  timeout "$1" python3 benchmarks/suite.py --device cuda --threads 4 --seeds 3 \
    --methods adamw-tuned,descend "${@:2}" --json "$out/suite-$part.json" 2>&1 \
    | tee "$out/suite-$part.txt"
}
case "$part" in
  new) suite 400 --only digits-cnn --only tokens-transformer --only tokens-gru \
    --only ratings-mf ;;
  five) suite 400 --only linear-regression --only logistic-regression --only deep-mlp \
    --only sequence-lstm --only text-bag ;;
  ddp)
    timeout 300 python3 -m pytest -rs -p no:cacheprovider -p no:benchmark -n 4 \
      tests/test_distributed.py 2>&1 | tee "$out/ddp.txt"
    echo "gpu_check ddp done"; exit 0 ;;
  rest) ;;
  *) suite 480 --only digits-mlp --only breast-cancer-mlp --only diabetes-mlp \
    --only synthetic-clf-20k --only friedman1-200k --only digits-wide-1M ;;
esac
case "$part" in suite | new | five) echo "gpu_check $part done"; exit 0 ;; esac

# 2. The whole test suite (134 s with -n 16 on an H200 in session 17; over 230 s in session
#    31, with 1,685 tests): with a GPU present, fit's device=None trains on it, so every fit
#    test runs the CUDA paths (session 6 found two bugs this way; session 17 one test; session
#    31 a device-side assert that left each later test of its worker failing in setup), and
#    the CUDA-only tests. -v names each failure as it happens: a run cut at the limit prints
#    no summary (session 31 lost its diagnosis that way; the pyproject's -q cancels a bare -v).
timeout 300 python3 -m pytest -o addopts= -v -rfE --tb=short -p no:cacheprovider \
  -p no:benchmark -n 16 tests > "$out/tests.txt" 2>&1
grep -E "(FAILED|ERROR) tests/" "$out/tests.txt" | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | head -60
tail -3 "$out/tests.txt"

# 3. fit's overhead against hand-written loops on the GPU (what time is left).
timeout 90 python3 benchmarks/fit_overhead.py --device cuda --repeats 2 --skip 50k \
  2>&1 | tee "$out/fit_overhead.txt"

# 4. Where a GPU starts to pay for the estimators' networks (descend.data.GPU_MIN_STEP_WORK).
timeout 60 python3 benchmarks/gpu_crossover.py 2>&1 | tee "$out/crossover.txt"
echo "gpu_check done"
