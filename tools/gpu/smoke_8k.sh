#!/usr/bin/env bash
# GPU smoke run used for the performance notes: both scripts at 8192 context with the study's 8k presets on a
# generated dataset, MAX_WALLCLOCK_SECONDS each (default 120). Usage: bash tools/gpu/smoke_8k.sh [baseline|hybrid]...
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
DATA=${DATA_PATH:-data/datasets/synthetic_sp1024}
[ -f "$DATA/synthetic_train_000000.bin" ] || python3 data/make_synthetic_dataset.py --out "$DATA" --train-tokens 40000000 --val-tokens 2000000
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(baseline hybrid)
for model in "${models[@]}"; do
  if [ "$model" = baseline ]; then script=train_gpt.py; mw=190; wd=381; seed=1337; else script=train_gpt_gdn.py; mw=160; wd=320; seed=1340; fi
  env DATA_PATH="$DATA" TOKENIZER_PATH="${TOKENIZER_PATH:-.gpudata/fineweb_1024_bpe.model}" \
    RUN_ID="smoke_${model}_seq8192" VOCAB_SIZE=1024 MAX_WALLCLOCK_SECONDS="${MAX_WALLCLOCK_SECONDS:-120}" \
    TIED_EMBED_LR=0.030 MATRIX_LR=0.020 SCALAR_LR=0.020 MUON_MOMENTUM=0.99 MUON_MOMENTUM_WARMUP_START=0.92 \
    WARMUP_STEPS=20 TRAIN_LOG_EVERY=10 VAL_LOSS_EVERY="${VAL_LOSS_EVERY:-50}" TRAIN_SEQ_LEN=8192 TRAIN_BATCH_TOKENS=393216 \
    MUON_MOMENTUM_WARMUP_STEPS=$mw WARMDOWN_ITERS=$wd SEED=$seed VAL_MAX_TOKENS="${VAL_MAX_TOKENS:-1048576}" \
    OUTPUT_DIR="out/$model" python3 "$script"
done
