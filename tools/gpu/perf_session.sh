#!/usr/bin/env bash
# One device call's worth of speed measurements (issue 5), in the order that spends device time best:
#   1. tools/check_gdn_fla.py first: it also warms the TileLang/Triton caches (minutes on a fresh machine),
#   2. tools/check_compile.py (both scripts, compiled vs eager vs fp32),
#   3. per sequence length, the current scripts and (if OLD_SCRIPT_DIR is given) an older version, back to back,
#      so that every old/new pair is measured in the same call; step lines of every run are kept.
# Usage: bash tools/gpu/perf_session.sh OUT_DIR [OLD_SCRIPT_DIR]
#   env: SEQS (8192,16384,32768) MODELS (hybrid,baseline) STEPS (5) CHECKS (1: run steps 1-2) TOKENIZER_PATH
#        DATA_PATH (generated if absent) BATCH_TOKENS (the presets; set only for CPU smoke runs)
# Make OLD_SCRIPT_DIR with: mkdir -p .bench_old && git show REV:train_gpt.py > .bench_old/train_gpt.py (and _gdn).
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ]; then echo "usage: bash tools/gpu/perf_session.sh OUT_DIR [OLD_SCRIPT_DIR]" >&2; exit 2; fi
OUT=$1; OLD=${2:-}
if [ -n "$OLD" ] && [ ! -f "$OLD/train_gpt.py" ]; then echo "OLD_SCRIPT_DIR $OLD: no train_gpt.py there" >&2; exit 2; fi
TOK=${TOKENIZER_PATH:-.gpudata/fineweb_1024_bpe.model}
if [ ! -f "$TOK" ]; then echo "TOKENIZER_PATH $TOK: no such file" >&2; exit 2; fi
export PYTHONUNBUFFERED=1 BENCH_WORKDIR=${BENCH_WORKDIR:-/tmp/bench_step_time}
mkdir -p "$OUT/logs"
DATA=${DATA_PATH:-data/datasets/synthetic_sp1024}
[ -f "$DATA/synthetic_train_000000.bin" ] || \
  python3 data/make_synthetic_dataset.py --out "$DATA" --train-tokens 12000000 --val-tokens 300000 > /dev/null
if [ "${CHECKS:-1}" = 1 ]; then
  python3 tools/check_gdn_fla.py --seq-lens 100,2048 > "$OUT/gdn_check.txt" 2>&1; tail -1 "$OUT/gdn_check.txt"
  python3 tools/check_compile.py > "$OUT/compile_check.txt" 2>&1; tail -1 "$OUT/compile_check.txt"
fi
keep_logs() {  # the study's lines of each bench run (the full logs hold the script source too)
  for f in "$BENCH_WORKDIR"/logs/*.txt; do
    [ -f "$f" ] && grep -E "^(step|warmup|peak|sdp_|gdn_impl|model:|device:)" "$f" > "$OUT/logs/$(basename "$f")"
  done
}
bench() { python3 tools/bench_step_time.py --tokenizer "$TOK" --data "$DATA" --steps "${STEPS:-5}" --warmup 1 \
  --out-dir "$OUT" --timeout 420 --models "${MODELS:-hybrid,baseline}" ${BATCH_TOKENS:+--batch-tokens "$BATCH_TOKENS"} \
  "$@" 2>&1 | grep -E "^probe"; keep_logs; }
for seq in $(echo "${SEQS:-8192,16384,32768}" | tr ',' ' '); do
  bench --seq-lens "$seq" --label new
  [ -z "$OLD" ] || bench --seq-lens "$seq" --script-dir "$OLD" --label old
done
