#!/usr/bin/env bash
# The one prepared GPU run of fastdarts (DESIGN.md "GPU hot path"; issue 9, section 4).
#
#   bash benchmarks/gpu_check.sh                 # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # end to end on CPU, CUDA-only stages skipped
#
# Stages (each capped with `timeout`; the caps sum to 480 s and a global deadline keeps the
# whole run within 8 minutes even if every stage hits its cap):
#   1 environment (GPU, clocks, torch, triton, nvcc)        5 kernel table + backend choice for "auto"
#   2 build the CUDA extension, assert it is loaded          6 search-step table, host syncs per step
#   3 the cuda-marked tests (and the Triton kernel tests)    6a pcdarts-imagenet: plan + step at batch 1024
#   4 int64-offset (n > 2^31, bf16, K=2) + misaligned views  6b darts auto+compile (own cap: compile time)
#   7 largest batch within the card's memory                 8 report: benchmarks/results/<device>-<date>.json
#                                                              (+ .md), README table
# A failed or timed-out stage is recorded and the run goes on; the exit status is non-zero if
# any stage failed. The dry run writes to $FASTDARTS_GPU_CHECK_OUT (default: a temporary
# directory), never to benchmarks/results, and does not touch the README.
# Environment: PYTHON (interpreter; default .venv/bin/python if present, else python3),
# FASTDARTS_GPU_CHECK_OUT (output directory).
set -u -o pipefail

cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --cpu-dry-run or nothing)" >&2; exit 2 ;;
  esac
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STATE=$(mktemp -d -t fastdarts-gpu-check.XXXXXX)
if [ "$DRY" = 1 ]; then
  OUT=${FASTDARTS_GPU_CHECK_OUT:-$STATE/results}
  MODE=--dry-run
else
  OUT=${FASTDARTS_GPU_CHECK_OUT:-benchmarks/results}
  MODE=
fi
CHECK="$PYTHON benchmarks/gpu_check.py"
# The dry run gets 4x the caps: it times the Triton interpreter and a small shared CPU, and its
# purpose is to run every line, not to fit the GPU budget.
SCALE=1
[ "$DRY" = 1 ] && SCALE=4
START=$(date +%s)
DEADLINE=$((START + 480 * SCALE))
FAILED=0

# run_stage NAME CAP_SECONDS COMMAND...: runs COMMAND under `timeout` (capped by the deadline)
# and appends "NAME<TAB>status<TAB>seconds<TAB>rc" to $STATE/stages.tsv.
run_stage() {
  local name=$1 cap=$(($2 * SCALE))
  shift 2
  local now left status rc t0
  now=$(date +%s)
  left=$((DEADLINE - now - 20 * SCALE))  # time stays reserved for the report
  [ "$name" = report ] && left=$((DEADLINE - now))
  if [ "$left" -lt "$cap" ]; then cap=$left; fi
  echo
  echo "=== stage $name (cap ${cap}s) ==="
  if [ "$cap" -le 0 ]; then
    printf '%s\ttimeout\t0\t124\n' "$name" >> "$STATE/stages.tsv"
    echo "no time left: stage $name not run"
    FAILED=1
    return
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$cap" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    3) status=skipped ;;  # gpu_check.py exits 3 for "not applicable here"
    *) status=failed ;;
  esac
  if [ "$status" = timeout ] || [ "$status" = failed ]; then FAILED=1; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$rc" >> "$STATE/stages.tsv"
  echo "--- stage $name: $status ($(( $(date +%s) - t0 )) s)"
}

skip_stage() {  # skip_stage NAME REASON
  printf '%s\tskipped\t0\t3\n' "$1" >> "$STATE/stages.tsv"
  echo
  echo "=== stage $1: skipped ($2) ==="
}

run_stage env 10 $CHECK env --state "$STATE" $MODE

if [ "$DRY" = 1 ]; then
  skip_stage build "CPU dry run: the installed extension is used as is"
  skip_stage cuda-tests "CPU dry run"
else
  # Never reinstall torch: --no-deps, and --no-build-isolation builds against the installed one.
  run_stage build 110 bash -c "FASTDARTS_CUDA_ARCHS=90 MAX_JOBS=\${MAX_JOBS:-16} $PYTHON -m pip install -q \
--no-build-isolation --no-deps -e . && $CHECK build-check --state '$STATE'"
  run_stage cuda-tests 80 "$PYTHON" -m pytest -q -m "cuda or interpreter" tests/test_cuda_compile.py \
    tests/test_cpp_ops.py tests/test_triton_mixed_sum.py tests/test_gates.py -p no:cacheprovider
fi

run_stage int64-misaligned 20 $CHECK int64 --state "$STATE" $MODE
run_stage kernels 35 $CHECK kernels --state "$STATE" $MODE
run_stage search 50 $CHECK search --state "$STATE" $MODE
run_stage imagenet 75 $CHECK imagenet --state "$STATE" $MODE
run_stage search-compile 45 $CHECK search-compile --state "$STATE" $MODE
run_stage max-batch 45 $CHECK max-batch --state "$STATE" $MODE
run_stage report 10 $CHECK report --state "$STATE" --out "$OUT" $MODE

echo
echo "gpu_check: $(( $(date +%s) - START )) s in all; results in $OUT; stage log $STATE/stages.tsv"
exit $FAILED
