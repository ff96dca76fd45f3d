#!/usr/bin/env bash
# The project's tests: installs what they need (requirements.txt: torch, CPU is fine, numpy, sentencepiece,
# huggingface_hub, matplotlib, pytest; only missing packages, never replacing an installed PyTorch), then
# runs `python3 -m pytest -q tests/` and exits with pytest's status. Arguments go to pytest.
# SKIP_INSTALL=1 skips the install step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source launchers/common.sh
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    lc_pip_install requirements.txt || { echo "run_tests.sh: installing requirements.txt failed" >&2; exit 1; }
fi
rc=0
python3 -m pytest -q tests/ "$@" || rc=$?
exit $rc
