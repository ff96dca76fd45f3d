#!/usr/bin/env bash
# Hybrid: Gated DeltaNet + attention (train_gpt_gdn.py), 600 s on one H100 at one context length, with the study's presets
# (SPEC.md "Launcher presets"); without CUDA, a CPU-sized profile of the same run, said loudly.
#   usage: run_hybrid_long_context_single_h100.sh {8192|16384|32768}
# Any setting can be overridden from the environment (SEED=..., RUN_ID=..., NPROC=2, DRY_RUN=1, ...):
# see launchers/common.sh. The log is logs/$RUN_ID.txt, headed by the launcher's settings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launchers/common.sh"
lc_single hybrid "$@"
