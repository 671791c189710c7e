#!/usr/bin/env bash
# One call that validates the CUDA backend on a machine with an NVIDIA GPU, in under 8 minutes
# (each stage has its own time limit: install 100 s, tests 170 s, benchmark 120 s, memory 60 s):
#   1. installs what is missing (needle with the `cuda` extra: CuPy; pytest),
#   2. runs the CUDA tests (tests/test_cuda.py, test_cuda_reference.py, test_nvrtc.py) and
#      counts passed / failed / skipped,
#   3. runs benchmarks/bench_cuda.py (needle vs PyTorch on the GPU),
#   4. trains MLPResNet for 200 steps (fast and graph backward) and checks that CuPy's pool
#      and the live Tensor count do not grow,
# and writes DIR/report.md (each stage's result and log tail) beside the stages' full logs.
#
# Usage: scripts/gpu_check.sh [--dry-run] [DIR]
#   DIR defaults to $OUT/gpu_check when $OUT is set, else runs/gpu_check (ignored by git).
#   --dry-run runs every stage without a GPU (GPU tests skip, the benchmark runs --simulate,
#   the memory check runs on cuda.simulated()): a check of this script, not of a GPU.
#   $PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
# Exit status: 0 all stages passed, 1 a stage failed, 2 no NVIDIA GPU (without --dry-run).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ -n "${OUT:-}" ]; then DIR="${1:-$OUT/gpu_check}"; else DIR="${1:-$ROOT/runs/gpu_check}"; fi
mkdir -p "$DIR"
REPORT="$DIR/report.md"
LOGS="$DIR"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export NEEDLE_GPU_CHECK=1  # tests/test_cuda.py does not start this script from inside it
START=$SECONDS
STATUS=0

say() { echo "$*" | tee -a "$REPORT"; }
stage_log() {  # stage_log TITLE LOGFILE: the log's last 40 lines into the report
    { echo; echo "<details><summary>$1 (last 40 lines)</summary>"; echo; echo '```';
      tail -n 40 "$2"; echo '```'; echo "</details>"; echo; } >> "$REPORT"
}
fail() { STATUS=1; say "- **FAIL** $*"; }

: > "$REPORT"
say "# needle GPU check"
say ""
say "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(hostname); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "- python: $("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1)"
if command -v nvidia-smi >/dev/null 2>&1; then
    say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
elif [ "$DRY" = 0 ]; then
    say "- no NVIDIA GPU here (nvidia-smi not found): nothing to check; --dry-run checks the script"
    exit 2
else
    say "- dry run without a GPU: GPU tests skip, the benchmark runs --simulate"
fi

# ---- 1. install -----------------------------------------------------------------------------
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
say ""
say "## 1. install"
if [ "$DRY" = 0 ] && ! has cupy; then
    timeout 100 "$PY" -m pip install -q -e ".[cuda]" > "$LOGS/install.log" 2>&1 \
        || fail "pip install -e .[cuda] (see log): CuPy missing, the GPU tests will skip"
    stage_log "install" "$LOGS/install.log"
fi
if ! has pytest; then
    timeout 60 "$PY" -m pip install -q pytest hypothesis > "$LOGS/pytest.log" 2>&1 \
        || fail "pip install pytest"
fi
for mod in numpy pytest cupy torch; do
    if has "$mod"; then
        say "- $mod $("$PY" -c "import $mod; print($mod.__version__)" 2>/dev/null)"
    else
        say "- $mod: not importable"
    fi
done
ENABLED="$("$PY" -c 'import needle; print(needle.cuda().enabled())' 2>&1 | tail -n 1)"
say "- needle.cuda().enabled(): $ENABLED"
if [ "$DRY" = 0 ] && [ "$ENABLED" != "True" ]; then
    fail "needle.cuda() is not enabled: CuPy did not import or no GPU answered"
fi

# ---- 2. the CUDA tests -------------------------------------------------------------------
say ""
say "## 2. CUDA tests"
timeout 170 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
    tests/test_cuda_reference.py tests/test_nvrtc.py > "$LOGS/tests.log" 2>&1
RC=$?
SUMMARY="$(grep -E '[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s' "$LOGS/tests.log" | tail -n 1)"
count() { echo "$SUMMARY" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
say "- pytest exit $RC: $(count passed) passed, $(count failed) failed, $(count error) errors, $(count skipped) skipped"
[ "$RC" = 0 ] || fail "CUDA tests (exit $RC)"
if [ "$DRY" = 0 ] && [ "$(count skipped)" != 0 ]; then
    say "- skipped on a GPU machine (reasons in the log):"
    grep -E '^SKIPPED' "$LOGS/tests.log" | sed 's/^/  - /' | head -n 20 >> "$REPORT"
fi
sed -n '/ NVRTC /,$p' "$LOGS/tests.log" | grep -vE '^(SKIPPED|[0-9]+ passed|=+ short test summary)' | head -n 20 \
    > "$LOGS/table.txt"
if [ -s "$LOGS/table.txt" ]; then { echo; echo '```'; cat "$LOGS/table.txt"; echo '```'; } >> "$REPORT"; fi
stage_log "pytest" "$LOGS/tests.log"

# ---- 3. the benchmark --------------------------------------------------------------------
say ""
say "## 3. benchmarks/bench_cuda.py"
BENCH_ARGS=()
[ "$DRY" = 1 ] && BENCH_ARGS=(--simulate)
timeout 120 "$PY" benchmarks/bench_cuda.py ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} > "$LOGS/bench.log" 2>&1
RC=$?
say "- exit $RC"
[ "$RC" = 0 ] || fail "bench_cuda.py (exit $RC; 124 = over its 120 s)"
{ echo; echo '```'; tail -n 25 "$LOGS/bench.log"; echo '```'; } >> "$REPORT"

# ---- 4. memory growth over 200 training steps ------------------------------------------------
say ""
say "## 4. memory growth over 200 training steps"
timeout 60 "$PY" - "$DRY" > "$LOGS/memory.log" 2>&1 <<'PY'
import gc
import sys

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.models import MLPResNet

dry = sys.argv[1] == "1"
dev = ndl.cuda.simulated() if dry else ndl.cuda()
batch, dim = (64, 32) if dry else (256, 784)
steps, marks = 200, (20, 50, 100, 150, 200)
ok = True
for create_graph in (False, True):
    np.random.seed(0)
    model = MLPResNet(dim, 64, 2, 10, device=dev)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = ndl.Tensor(rng.standard_normal((batch, dim)).astype(np.float32), device=dev,
                   requires_grad=False)
    y = ndl.Tensor(rng.integers(0, 10, batch).astype(np.float32), device=dev,
                   requires_grad=False)
    loss_fn = nn.SoftmaxLoss()
    rows = []
    for step in range(1, steps + 1):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=create_graph)
        opt.step()
        if step in marks:
            value = float(loss.numpy())
            del loss
            gc.collect()
            dev.synchronize()
            rows.append((step, ndl.cuda.memory_stats()["allocated"],
                         ndl.autograd.TENSOR_COUNTER, value))
        else:
            del loss
    base_alloc, base_tensors = rows[0][1], rows[0][2]
    grew = [r for r in rows[1:] if r[1] > base_alloc + 2 ** 20 or r[2] > base_tensors]
    finite = all(np.isfinite(r[3]) for r in rows)
    path = "graph backward()" if create_graph else "backward(create_graph=False)"
    print(f"{path}: step, pool allocated bytes, live Tensors, loss")
    for r in rows:
        print(f"  {r[0]:4d} {r[1]:12d} {r[2]:8d} {r[3]:.4f}")
    print(f"  peak {ndl.cuda.memory_stats()['peak']} bytes; "
          + ("GROWS" if grew else "no growth") + ("" if finite else "; loss not finite"))
    ok = ok and not grew and finite and rows[-1][3] < rows[0][3]
print("memory check:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
RC=$?
say "- exit $RC (pass: after step 20 the pool grows by at most 1 MiB, the live Tensor count not at all, and the loss falls)"
[ "$RC" = 0 ] || fail "memory growth check (exit $RC)"
{ echo; echo '```'; tail -n 20 "$LOGS/memory.log"; echo '```'; } >> "$REPORT"

# ---- result ----------------------------------------------------------------------------------
say ""
ELAPSED=$((SECONDS - START))
if [ "$STATUS" = 0 ]; then say "**PASS** in ${ELAPSED} s"; else say "**FAIL** in ${ELAPSED} s"; fi
[ "$ELAPSED" -le 480 ] || say "- over the 8-minute budget"
say "- report: $REPORT; full logs beside it"
exit "$STATUS"
