#!/usr/bin/env bash
# Baseline: full-attention GPT (train_gpt.py) at 8192, 16384 and 32768 in turn (each through
# run_baseline_long_context_single_h100.sh), then logs/summary_baseline.md (+ .csv) and plots in logs/plots/baseline/.
#   usage: run_baseline_all_long_context_single_h100.sh [8192|16384|32768 ...]
# Settings as for the single launcher; a RUN_ID set here is a prefix: RUN_ID_seq<N> per run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launchers/common.sh"
lc_all baseline "$@"
