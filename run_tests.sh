#!/usr/bin/env bash
# The project's tests: installs what they need (requirements.txt: torch, CPU is fine, numpy, sentencepiece,
# huggingface_hub, matplotlib, pytest; only missing packages, never replacing an installed PyTorch), then
# installs triton (CPU wheel, for its interpreter: tests/test_triton_conv.py runs the hybrid's Triton kernels on
# the CPU) and fla-core 0.6.0 with einops (tests/test_fla_interpreted.py runs FLA's kernels the same way) into
# TRITON_INTERP_DIR (.cache/triton-interp), apart from the site packages so that nothing else imports them
# (each skipped where already importable, as on a CUDA host), then runs
# `python3 -m pytest -q tests/` and exits with pytest's status. Arguments go to pytest.
# SKIP_INSTALL=1 skips the install steps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source launchers/common.sh
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    lc_pip_install requirements.txt || { echo "run_tests.sh: installing requirements.txt failed" >&2; exit 1; }
    interp=${TRITON_INTERP_DIR:-.cache/triton-interp}
    if [[ ! -d "$interp/triton" ]] && ! python3 -c "import triton" 2>/dev/null; then  # a CUDA host has triton
        python3 -m pip install -q --no-deps --target "$interp" "triton==3.6.0" ||
            { echo "run_tests.sh: installing triton==3.6.0 into $interp failed" >&2; exit 1; }
    fi
    if [[ ! -d "$interp/fla" ]] && ! python3 -c "import fla" 2>/dev/null; then  # the GPU host's wheelhouse has it
        python3 -m pip install -q --no-deps --target "$interp" "fla-core==0.6.0" "einops==0.8.1" ||
            { echo "run_tests.sh: installing fla-core==0.6.0 into $interp failed" >&2; exit 1; }
    fi
fi
rc=0
python3 -m pytest -q tests/ "$@" || rc=$?
exit $rc
