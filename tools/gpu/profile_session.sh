#!/usr/bin/env bash
# One device call of profiles (issue 5): where the GPU time of a training step goes, per model and length,
# with tools/profile_script.py (--skip/--active keeps the trace small; its chrome trace goes to /tmp and the log
# gets tools/trace_gaps.py's summary of the idle GPU time), then the compiled-model check.
# Usage: bash tools/gpu/profile_session.sh OUT_DIR
#   env: RUNS ("hybrid:8192 baseline:8192 check": MODEL:SEQ[:LABEL[:ENV=V[,ENV=V]]] items and "check"
#        (tools/check_compile.py), in order; a LABEL names the run's files, its settings go to that run only,
#        e.g. "hybrid:32768:v27:GDN_DQKWG=0,GDN_WY_BWD=0 hybrid:32768:v29"; the first hybrid run also pays a
#        fresh machine's TileLang/Triton compilation)
#        TOKENIZER_PATH DATA_PATH (generated if absent) LIMIT (seconds per profile, 300) CUDA_GRAPHS (0)
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ]; then echo "usage: bash tools/gpu/profile_session.sh OUT_DIR" >&2; exit 2; fi
OUT=$1
RUNS=${RUNS:-hybrid:8192 baseline:8192 check}
for run in $RUNS; do  # every item checked before any long work
  [ "$run" = check ] && continue
  IFS=: read -r model seq label envs extra <<< "$run"
  case "$model" in baseline|hybrid) ;;
    *) echo "RUNS: unknown model '$model' in '$run' (expected baseline:SEQ, hybrid:SEQ or check)" >&2; exit 2 ;; esac
  [[ "$seq" =~ ^[0-9]+$ ]] || { echo "RUNS: seq '$seq' in '$run' is not a number" >&2; exit 2; }
  [[ -z "$label" || "$label" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "RUNS: label '$label' in '$run': letters, digits, _ . - only" >&2; exit 2; }
  [ -z "$extra" ] || { echo "RUNS: '$run' has more than MODEL:SEQ:LABEL:ENV=V,... (settings are comma-separated)" >&2; exit 2; }
  [ -z "$envs" ] || [ -n "$label" ] || { echo "RUNS: '$run' has settings without a LABEL" >&2; exit 2; }
  IFS=, read -r -a kv <<< "$envs"
  for e in ${kv[@]+"${kv[@]}"}; do
    [[ "$e" =~ ^[A-Z_][A-Z0-9_]*=.*$ ]] || { echo "RUNS: setting '$e' in '$run' is not NAME=VALUE" >&2; exit 2; }
  done
done
[[ "${LIMIT:-300}" =~ ^[0-9]+$ ]] || { echo "LIMIT=${LIMIT}: expected seconds (a whole number)" >&2; exit 2; }
mkdir -p "$OUT"
TOK=${TOKENIZER_PATH:-.gpudata/fineweb_1024_bpe.model}
if [ ! -f "$TOK" ]; then echo "TOKENIZER_PATH $TOK: no such file" >&2; exit 2; fi
DATA=${DATA_PATH:-data/datasets/synthetic_sp1024}
[ -f "$DATA/synthetic_train_000000.bin" ] || \
  python3 data/make_synthetic_dataset.py --out "$DATA" --train-tokens 12000000 --val-tokens 300000 > /dev/null
export PYTHONUNBUFFERED=1
# Kernel tables of the plain launches by default (comparable with earlier versions' tables; graphs change how the
# kernels are launched, not which): CUDA_GRAPHS=auto profiles the graph replays instead.
export CUDA_GRAPHS=${CUDA_GRAPHS:-0}
for run in $RUNS; do
  if [ "$run" = check ]; then
    timeout 900 python3 tools/check_compile.py > "$OUT/compile_check.txt" 2>&1; echo "check_compile: exit $?"
    tail -2 "$OUT/compile_check.txt"; continue
  fi
  IFS=: read -r model seq label envs _ <<< "$run"
  IFS=, read -r -a kv <<< "$envs"
  name="${model}_seq${seq}${label:+_$label}"
  script=train_gpt.py; [ "$model" = hybrid ] && script=train_gpt_gdn.py
  batch=393216; [ "$seq" -gt 16384 ] && batch=524288
  env DATA_PATH="$DATA" TOKENIZER_PATH="$TOK" RUN_ID="profile_$name" TRAIN_SEQ_LEN="$seq" \
    TRAIN_BATCH_TOKENS=$batch ITERATIONS=6 WARMUP_STEPS=3 TRAIN_LOG_EVERY=1 VAL_LOSS_EVERY=0 VAL_MAX_TOKENS="$seq" \
    MAX_WALLCLOCK_SECONDS=0 OUTPUT_DIR="/tmp/profile_out/$model" ${kv[@]+"${kv[@]}"} \
    timeout "${LIMIT:-300}" python3 tools/profile_script.py "$script" --skip 5 --active 2 --top 40 \
    --out "$OUT/profile_$name.txt" --trace "/tmp/profile_trace_$name.json.gz" > "$OUT/profile_$name.log" 2>&1
  echo "$run: exit $?"; grep -E "^(profile_per_step|trace_idle)" "$OUT/profile_$name.log"
  if [ -f "logs/profile_$name.txt" ]; then
    grep -E "^(step|warmup|peak|sdp_|attention:|gdn_impl)" "logs/profile_$name.txt" > "$OUT/steps_$name.txt"
  fi
done
