#!/usr/bin/env bash
# Baseline: full-attention GPT (train_gpt.py), 600 s on one H100 at one context length, with the study's presets
# (SPEC.md "Launcher presets"); without CUDA, a CPU-sized profile of the same run, said loudly.
#   usage: run_baseline_long_context_single_h100.sh {8192|16384|32768}
# Any setting can be overridden from the environment (SEED=..., RUN_ID=..., NPROC=2, DRY_RUN=1, ...):
# see launchers/common.sh. The log is logs/$RUN_ID.txt, headed by the launcher's settings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launchers/common.sh"
lc_single baseline "$@"
