#!/usr/bin/env bash
# The GPU measurements of README "Performance" (GPU), for a session that has a device machine: run it there from
# the repository root, most important first, every result appended to $OUT as soon as it exists.
#
#   bash .ci/gpu_measure.sh                      # on the GPU host (the device tool runs it with $OUT set)
#   GPU_MEASURE_TINY=1 REFS=/path/to/refs bash .ci/gpu_measure.sh   # dry run of the same steps, tiny, on a CPU
#
# Needs: python with jax[cuda], flax, optax, orbax, torch (CUDA), timm, einops, pytest; the project runs from the
# checkout (PYTHONPATH=.). REFS (default refs/ in the checkout) holds the authors' two model files as
# bench --reference-dir expects: drs_ref.py = DRSformer's basicsr/models/archs/DRSformer_arch.py, ast_ref.py =
# AST's model.py. They are never committed: list refs/ in .git/info/exclude and pass it to the device tool with
# carry=["refs"]. Packages the device image lacks (ml_collections, needed by the bench's train mode; grain and
# tensorflow_datasets for step 16) travel as wheels in $REFS/whl (`pip download --no-deps --only-binary=:all:
# --python-version 3.12 ... -d refs/whl ml-collections`) and are installed into a temporary folder first.
#
# Environment: OUT (results folder, default /tmp/gpu_measure), BUDGET_S (whole-script deadline, default 540 s),
# STEPS (comma-separated step numbers to run, default all), GPU_MEASURE_TINY=1 (tiny networks and sizes; budget
# 3600 s and 4x the step timeouts, for a CPU), TIMEOUT_SCALE (multiplies every step's timeout), PYTHON.
# Each step has its own timeout, cut to what is left of the budget; a step that cannot get 30 s is skipped and
# says so. Results: $OUT/results.jsonl (one JSON object per measurement, each tagged with its step), the
# commands' stderr in $OUT/log.txt, the parity test output in $OUT/parity.txt, a summary in $OUT/summary.txt.
# XLA flags stay at their defaults (cuDNN autotuning on); JAX does not preallocate device memory, so the
# allocator peaks are comparable and PyTorch finds room in the same process.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-/tmp/gpu_measure}"
REFS="${REFS:-refs}"
if [ "${GPU_MEASURE_TINY:-0}" = "1" ]; then
  # A CPU compiles even the tiny networks' train steps slowly (minutes each on 2 busy cores).
  BUDGET_S="${BUDGET_S:-3600}"; TIMEOUT_SCALE="${TIMEOUT_SCALE:-4}"
else
  BUDGET_S="${BUDGET_S:-540}"; TIMEOUT_SCALE="${TIMEOUT_SCALE:-1}"
fi
STEPS="${STEPS:-all}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
LOG="$OUT/log.txt"
if compgen -G "$REFS/whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT/../site-gpu-measure" \
    "$REFS"/whl/*.whl && export PYTHONPATH="$OUT/../site-gpu-measure${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
unset JAX_COMPILATION_CACHE_DIR  # the bench's --compilation-cache decides
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))

if [ "${GPU_MEASURE_TINY:-0}" = "1" ]; then
  DRS=(--model drsformer --model-kwargs '{"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 2]}')
  AST=(--model ast --model-kwargs '{"embed_dim": 8, "depths": [1, 1, 1, 1, 1, 1, 1, 1, 1], "img_size": 32}')
  TRAIN=(--mode train --size 32 --batch 2); FWD=(--mode forward --size 64 --batch 1)
  B16=(--mode train --size 32 --batch 4); RUNS=(--runs 2)
  PIPE=(--size 64 --batch 4 --num-workers 0,2 --runs 3)
else
  DRS=(--model drsformer); AST=(--model ast)
  TRAIN=(--mode train --size 128 --batch 4); FWD=(--mode forward --size 256 --batch 1)
  B16=(--mode train --size 128 --batch 16); RUNS=(--runs 10)
  PIPE=(--size 128 --batch 16 --num-workers 0,4,8,16 --runs 20)
fi
REF=(--reference-dir "$REFS" --reference-precision best)

{
  echo "gpu_measure $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "cpus $(nproc)"
  "$PY" -c "import sys, jax; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())" 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
} | tee "$OUT/summary.txt"
[ -f "$REFS/drs_ref.py" ] && [ -f "$REFS/ast_ref.py" ] || echo "WARNING: $REFS/drs_ref.py or ast_ref.py missing: reference steps will fail" | tee -a "$OUT/summary.txt"

want() { [ "$STEPS" = "all" ] || [[ ",$STEPS," == *",$1,"* ]]; }

# step N TIMEOUT_S DESCRIPTION -- command...: runs the command with the timeout (cut to the budget), appends each
# JSON line it prints to results.jsonl tagged with the step, and notes the outcome in summary.txt.
step() {
  local n="$1" limit="$2" what="$3"; shift 4
  want "$n" || return 0
  limit=$((limit * TIMEOUT_SCALE))
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 30 ]; then
    echo "step $n SKIPPED (budget: ${left}s left): $what" | tee -a "$OUT/summary.txt"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== step $n (timeout ${limit}s): $what" | tee -a "$LOG"
  local t0=$(date +%s) rc from=$(($(wc -l <"$LOG") + 1))
  timeout --kill-after=10 "$limit" "$@" 2>>"$LOG" | while IFS= read -r line; do
    case "$line" in
      "{"*) printf '{"step": %s, "what": "%s", "record": %s}\n' "$n" "$what" "$line" >>"$RESULTS" ;;
      *) echo "$line" >>"$LOG" ;;
    esac
  done
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then  # ours is on stderr before a reference runs: keep it when the step did not finish
    tail -n +"$from" "$LOG" | sed -n 's/^\[bench\] ours: //p' | while IFS= read -r line; do
      printf '{"step": %s, "what": "%s", "partial": true, "record": %s}\n' "$n" "$what" "$line" >>"$RESULTS"
    done
  fi
  echo "step $n rc=$rc $(( $(date +%s) - t0 ))s: $what" | tee -a "$OUT/summary.txt"
}

# One persistent compilation cache per conv policy, empty at the start (cold compile), shared by later steps.
# CACHE_ROOT (default $OUT) outside $OUT lets a second call on the same machine reuse them (KEEP_CACHE=1).
CACHE_ROOT="${CACHE_ROOT:-$OUT}"
TAPS=("$PY" -m sparse_restore.bench --compilation-cache "$CACHE_ROOT/jax_cache_taps" --conv-impl taps)
XLA=("$PY" -m sparse_restore.bench --compilation-cache "$CACHE_ROOT/jax_cache_xla" --conv-impl xla)
[ "${KEEP_CACHE:-0}" = "1" ] || rm -rf "$CACHE_ROOT/jax_cache_taps" "$CACHE_ROOT/jax_cache_xla"
# (a)+(b) DRSformer train step 4x128, float32: cold compile, then a second process with the cache (the cached
# compile figure) that also times the reference in the same run. 'taps' first (the candidate), then 'xla'
# (today's GPU default).
step 1 200 "DRSformer train f32 taps: cold compile + timing" -- "${TAPS[@]}" "${DRS[@]}" "${TRAIN[@]}" "${RUNS[@]}"
step 2 150 "DRSformer train f32 taps: cached compile + timing + reference" -- \
  "${TAPS[@]}" "${DRS[@]}" "${TRAIN[@]}" "${RUNS[@]}" "${REF[@]}"
# (c) fixture parity on the GPU (<= 1e-5 at 'highest'; the default precision's error printed).
if want 5; then
  step 5 150 "GPU fixture parity (pytest tests/test_gpu_parity.py)" -- bash -c \
    "'$PY' -m pytest -q -s -p no:cacheprovider tests/test_gpu_parity.py 2>&1 | tee '$OUT/parity.txt' | grep -E 'gpu-parity|passed|failed|skipped|rror' >&2"
fi
# (b) bfloat16 compute (f32 params and optimizer); forward passes; AST_B; the 'xla' rows.
step 6 150 "DRSformer train bf16 taps + reference" -- \
  "${TAPS[@]}" "${DRS[@]}" "${TRAIN[@]}" "${RUNS[@]}" --dtype bfloat16 "${REF[@]}"
step 7 150 "DRSformer forward f32 taps + reference" -- "${TAPS[@]}" "${DRS[@]}" "${FWD[@]}" "${RUNS[@]}" "${REF[@]}"
step 8 120 "DRSformer forward bf16 taps" -- "${TAPS[@]}" "${DRS[@]}" "${FWD[@]}" "${RUNS[@]}" --dtype bfloat16
step 9 180 "AST_B train f32 taps + reference" -- "${TAPS[@]}" "${AST[@]}" "${TRAIN[@]}" "${RUNS[@]}" "${REF[@]}"
step 10 120 "AST_B forward f32 taps + reference" -- "${TAPS[@]}" "${AST[@]}" "${FWD[@]}" "${RUNS[@]}" "${REF[@]}"
# (d) images/s at batch 16 x 128x128, ours and the reference.
step 14 200 "DRSformer train batch 16 taps + reference" -- \
  "${TAPS[@]}" "${DRS[@]}" "${B16[@]}" --runs 5 "${REF[@]}" --reference-runs 5
step 15 200 "AST_B train batch 16 taps + reference" -- \
  "${TAPS[@]}" "${AST[@]}" "${B16[@]}" --runs 5 "${REF[@]}" --reference-runs 5
step 11 180 "AST_B train f32 xla" -- "${XLA[@]}" "${AST[@]}" "${TRAIN[@]}" "${RUNS[@]}"
step 12 150 "DRSformer forward f32 xla" -- "${XLA[@]}" "${DRS[@]}" "${FWD[@]}" "${RUNS[@]}"
step 13 120 "AST_B forward f32 xla" -- "${XLA[@]}" "${AST[@]}" "${FWD[@]}" "${RUNS[@]}"
# The 'xla' train step last: with cuDNN autotuning it did not compile within 176 s before.
step 3 200 "DRSformer train f32 xla: cold compile + timing" -- "${XLA[@]}" "${DRS[@]}" "${TRAIN[@]}" "${RUNS[@]}"
step 4 90 "DRSformer train f32 xla: cached compile + timing" -- "${XLA[@]}" "${DRS[@]}" "${TRAIN[@]}" "${RUNS[@]}"
# Input pipeline on this host (Rain200H-sized synthetic PNG pairs), against the train step's images/s.
if want 16; then
  "$PY" - "$OUT/pipeline_raw" <<'EOF' 2>>"$LOG"
import os, sys
import numpy as np
from PIL import Image
root = sys.argv[1]
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:321, 0:481]
for split, n in (("train", 48), ("test", 2)):
  for kind in ("input", "target"):
    os.makedirs(os.path.join(root, split, kind), exist_ok=True)
  for i in range(1, n + 1):
    base = (np.stack([np.sin(xx / (17 + i)) , np.cos(yy / (23 + i)), np.sin((xx + yy) / 31)], -1) + 1) * 100
    clean = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    rain = np.clip(clean + (rng.random(base.shape[:2]) > 0.97)[..., None] * 90, 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(os.path.join(root, split, "target", f"{i}.png"))
    Image.fromarray(rain).save(os.path.join(root, split, "input", f"{i}.png"))
EOF
  step 16 120 "input pipeline images/s (Rain200H-sized PNGs)" -- "$PY" -m sparse_restore.bench --mode input-pipeline \
    --dataset rain200h --manual-dir "$OUT/pipeline_raw" --data-dir "$OUT/pipeline_tfds" "${PIPE[@]}"
fi

echo "done in $(( $(date +%s) - START ))s; results: $RESULTS" | tee -a "$OUT/summary.txt"
