#!/usr/bin/env bash
# A/B step-time runs in one device session (issue 5): each ITEM is MODEL:SEQ:LABEL[:SCRIPT_DIR[:ENV=V[,ENV=V]]],
# run in the order given through tools/bench_step_time.py (its probe lines carry version:LABEL), after an
# optional tools/check_gdn_fla.py (which also warms TileLang/Triton on a fresh machine). Writes OUT_DIR/probes.txt
# (probe lines, appended as each run ends), OUT_DIR/logs/ (each run's study lines), OUT_DIR/DONE at the end, so
# that a session longer than one device call can run under setsid nohup and be collected by a later call. Where
# nvidia-smi is on the machine, the GPU's clock, power and clock-event reasons are sampled every 100 ms into
# OUT_DIR/power.csv, each run's times kept in OUT_DIR/runs.txt, and tools/power_summary.py's line per run written to
# OUT_DIR/power.txt (thirty-fifth session: the H200 ran the timed steps at its 700 W cap).
# Usage: bash tools/gpu/ab_session.sh OUT_DIR ITEM...
#   e.g. ITEMs hybrid:8192:new  hybrid:8192:old:.bench_old  baseline:8192:mb08:.:COMPILE_MEMORY_BUDGET=0.8
#   env: CHECK_GDN (seq lens for tools/check_gdn_fla.py, e.g. 100,2048; unset: skip) TOKENIZER_PATH
#        STEPS (7; ms/step is the median of the step deltas after step 3: 5 steps give only two)
#        REPEAT (1: rounds over the items, every second round in reverse order, for A/B on a drifting card)
#        BENCH_TIMEOUT (420: seconds per bench run, compile included)
#        DATA_PATH (generated if absent) BATCH_TOKENS (the presets; set only for CPU smoke runs)
#   Each label compiles into its own inductor cache under BENCH_WORKDIR (versions never share compiled graphs).
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 2 ]; then echo "usage: bash tools/gpu/ab_session.sh OUT_DIR MODEL:SEQ:LABEL[:SCRIPT_DIR[:ENV=V,...]]..." >&2; exit 2; fi
OUT=$1; shift
for item in "$@"; do  # every item checked before any long work
  IFS=: read -r model seq label dir envs <<< "$item"
  case "$model" in baseline|hybrid) ;; *) echo "ITEM $item: model '$model', expected baseline or hybrid" >&2; exit 2 ;; esac
  [[ "$seq" =~ ^[0-9]+$ ]] || { echo "ITEM $item: seq '$seq', expected a number" >&2; exit 2; }
  [ -n "$label" ] || { echo "ITEM $item: no LABEL" >&2; exit 2; }
  [ -f "${dir:-.}/train_gpt.py" ] || { echo "ITEM $item: SCRIPT_DIR '${dir}' has no train_gpt.py" >&2; exit 2; }
done
# a hybrid item timed without FLA's kernels wastes the session (grep without -q: no SIGPIPE under pipefail)
if printf '%s\n' "$@" | grep '^hybrid:' | grep -v 'GDN_IMPL=torch' > /dev/null; then
  why=$(python3 -c 'import sys; sys.path.insert(0, "."); from tools.bench_step_time import fla_missing_for_hybrid as f
print(f(["hybrid"]) or "")') || exit 2
  [ -z "$why" ] || { echo "hybrid items: $why" >&2; exit 2; }
fi
REPEAT=${REPEAT:-1}
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "REPEAT=$REPEAT: expected a positive whole number of rounds" >&2; exit 2; }
BENCH_TIMEOUT=${BENCH_TIMEOUT:-420}
[[ "$BENCH_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_TIMEOUT=$BENCH_TIMEOUT: expected a positive whole number of seconds" >&2; exit 2; }
TOK=${TOKENIZER_PATH:-.gpudata/fineweb_1024_bpe.model}
if [ ! -f "$TOK" ]; then echo "TOKENIZER_PATH $TOK: no such file" >&2; exit 2; fi
export PYTHONUNBUFFERED=1 BENCH_WORKDIR=${BENCH_WORKDIR:-/tmp/bench_step_time}
mkdir -p "$OUT/logs"; rm -f "$OUT/DONE" "$OUT/runs.txt"
DATA=${DATA_PATH:-data/datasets/synthetic_sp1024}
[ -f "$DATA/synthetic_train_000000.bin" ] || \
  python3 data/make_synthetic_dataset.py --out "$DATA" --train-tokens 12000000 --val-tokens 300000 > /dev/null
if [ -n "${CHECK_GDN:-}" ]; then
  python3 tools/check_gdn_fla.py --seq-lens "$CHECK_GDN" > "$OUT/gdn_check.txt" 2>&1
  echo "check_gdn_fla: exit $? ($(grep -m1 "^gdn_check:" "$OUT/gdn_check.txt" || echo "no verdict line"))"
fi
if command -v nvidia-smi > /dev/null; then  # the clock-event field's older name on older drivers
  reasons=clocks_event_reasons.active
  nvidia-smi --query-gpu=$reasons --format=csv,noheader > /dev/null 2>&1 || reasons=clocks_throttle_reasons.active
  TZ=UTC nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,power.limit,temperature.gpu,$reasons \
    --format=csv,noheader,nounits -lms 100 > "$OUT/power.csv" 2>&1 &
  sampler=$!
  trap 'kill $sampler 2> /dev/null' EXIT
fi
run_item() {  # ITEM REP: one bench run; its output file gets _rREP after the first round
  local item=$1 rep=$2 model seq label dir envs extra=() res start
  IFS=: read -r model seq label dir envs <<< "$item"
  [ -n "$envs" ] && IFS=, read -r -a extra <<< "$envs"
  res="$OUT/bench_${label}_${model}_${seq}$([ "$rep" -gt 1 ] && echo "_r$rep").txt"
  # One inductor cache per label: its key does not cover a custom op's tags, so a version that differs only there
  # would replay another version's compiled graph (ninth session: v14 timed with v15's code, PERF_NOTES v15).
  local cache="$BENCH_WORKDIR/inductor_cache/$label"
  mkdir -p "$cache"
  start=$(date +%s.%N)
  env TORCHINDUCTOR_CACHE_DIR="$cache" "${extra[@]}" python3 tools/bench_step_time.py --tokenizer "$TOK" \
    --data "$DATA" --steps "${STEPS:-7}" --warmup 1 --out-dir "$OUT" --timeout "$BENCH_TIMEOUT" --models "$model" \
    --seq-lens "$seq" --script-dir "${dir:-.}" --label "$label" \
    ${BATCH_TOKENS:+--batch-tokens "$BATCH_TOKENS"} > "$res" 2>&1
  echo "$label $model $seq $rep $start $(date +%s.%N)" >> "$OUT/runs.txt"
  grep -E "^probe" "$res" | tee -a "$OUT/probes.txt"
  grep -q "^probe" "$res" || echo "$item: no probe ($(tail -1 "$res"))"
  for f in "$BENCH_WORKDIR"/logs/*.txt; do  # the study's lines of each run (the full logs hold the source too)
    [ -f "$f" ] && grep -E "^(step|warmup|peak|sdp_|attention:|gdn_impl|model:|device:|autotune_picks)" "$f" > "$OUT/logs/$(basename "$f")"
  done
}
items=("$@")
for ((rep = 1; rep <= REPEAT; rep++)); do  # even rounds in reverse order: a drifting card hits both sides alike
  order=("${items[@]}")
  if ((rep % 2 == 0)); then order=(); for ((i = ${#items[@]} - 1; i >= 0; i--)); do order+=("${items[i]}"); done; fi
  for item in "${order[@]}"; do run_item "$item" "$rep"; done
done
# runs of one code can pick different autotune configs: which kernels differed, where the runs logged picks
mapfile -t picked < <(grep -l "^autotune_picks" "$OUT"/logs/*.txt 2>/dev/null)
if [ ${#picked[@]} -gt 0 ]; then python3 tools/compare_picks.py "${picked[@]}" | tee "$OUT/picks.txt"; fi
if [ -s "$OUT/power.csv" ] && [ -f "$OUT/runs.txt" ]; then
  python3 tools/power_summary.py "$OUT/power.csv" "$OUT/runs.txt" | tee "$OUT/power.txt"
fi
touch "$OUT/DONE"
