#!/usr/bin/env bash
# The one prepared GPU call of issue 12: runs scripts/gpu_bench.py and writes, under $OUT,
#   gpu_bench.json  every section's measurements (rewritten after each section)
#   gpu_check.log   the whole console output
# On a lent GPU machine (device tool), from the repository root:
#   OUT=$OUT bash scripts/gpu_check.sh
# On a CPU, as a check of the command itself (tiny sizes, about a minute on a busy 2-core machine):
#   OUT=/tmp/gpu_check SMOKE=1 bash scripts/gpu_check.sh
#
# The lent machine has torch and numpy but not this package, and no package index. Launcher: when
# `parapolicy.policy` does not import, a temporary folder gets a `parapolicy/` directory (a namespace
# package, no __init__) with links `policy`, `envs` and `scripts` to this checkout, and goes first on
# PYTHONPATH: the installed layout (`policy/` is `parapolicy.policy`), without installing anything.
# CHECKOUT_IMPORT=1 uses the launcher even where the package is installed (to test it).
#
# Time: the Python run is capped at BUDGET_S seconds of sections (default 420) and killed by `timeout`
# at BUDGET_S + 60; the device call should get timeout_s of at least 540.
set -uo pipefail
: "${OUT:?set OUT to the folder that receives gpu_bench.json and gpu_check.log}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-420}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"

if [ -n "${CHECKOUT_IMPORT:-}" ] || ! "$PY" -c "import parapolicy.policy.diffusion" 2>/dev/null; then
    SHIM="$(mktemp -d)"
    mkdir -p "$SHIM/parapolicy"
    for sub in policy envs scripts; do ln -s "$REPO/$sub" "$SHIM/parapolicy/$sub"; done
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    echo "launcher: parapolicy imported from the checkout via $SHIM" | tee "$LOG"
else
    echo "launcher: parapolicy is installed" | tee "$LOG"
fi

ARGS=(--out "$OUT/gpu_bench.json" --budget-s "$BUDGET_S")
if [ -n "${SMOKE:-}" ]; then ARGS+=(--smoke); fi
if [ -n "${SECTIONS:-}" ]; then ARGS+=(--sections "$SECTIONS"); fi
cd "$REPO" || exit 1
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; } >>"$LOG"
PYTHONUNBUFFERED=1 timeout --signal=TERM --kill-after=10 "$((BUDGET_S + 60))" \
    "$PY" scripts/gpu_bench.py "${ARGS[@]}" 2>&1 | tee -a "$LOG"
status=$?
echo "gpu_check: exit status $status" | tee -a "$LOG"
exit "$status"
