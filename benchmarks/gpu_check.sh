#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a device machine (see the device tool's
# README): the CUDA tests, fit's overhead on the GPU, and the zero-tuning suite's small
# workloads, each under its own time limit so the whole fits one call (~9 minutes).
#
#   From the repo root, on the device machine (its torch has CUDA; the peers' wheels travel):
#     bash benchmarks/gpu_check.sh            # logs and JSON land in $OUT (or ./gpu-out)
#
# Wheels: torch is already there; pytest, scikit-learn and the peers (schedulefree,
# prodigyopt) may not be. Put py3 wheels in .whl/ (ignored by git) and carry it: they are
# installed with --no-deps into /tmp/site first.
set -uo pipefail
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

# 1. The whole suite: with a GPU present, fit's device=None trains on it, so every fit test runs
#    the CUDA paths (session 6 found two bugs this way), and the CUDA-only tests run too.
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests 2>&1 | tee "$out/tests.txt"

# 2. fit's overhead against hand-written loops (plain MLPs take the fast path; the
#    descend.fit/autograd row is the loop's own overhead).
timeout 120 python3 benchmarks/fit_overhead.py --device cuda --repeats 3 --skip 50k \
  2>&1 | tee "$out/fit_overhead.txt"

# 3. The zero-tuning suite's small workloads (descend vs tuned AdamW) on the GPU.
timeout 180 python3 benchmarks/suite.py --device cuda --threads 4 \
  --only digits-mlp --only breast-cancer-mlp --only diabetes-mlp \
  --methods adamw-tuned,descend --json "$out/suite.json" 2>&1 | tee "$out/suite.txt"
echo "gpu_check done"
