#!/usr/bin/env bash
# The whole study in one command: full attention (train_gpt.py) vs the Gated DeltaNet hybrid (train_gpt_gdn.py),
# 600 s each on one GPU at 8k, 16k and 32k context, then the results table and plots.
#
#   bash run_study.sh
#
# 1. Installs what is missing from requirements.txt (an installed PyTorch is never replaced); on a CUDA host
#    also fla-core (the GDN kernels) and, on Hopper with Triton in [3.4, 3.7.1), TileLang (requirements-gpu.txt;
#    from GPU_WHEELHOUSE, default ./.gpuwheels, when that folder has an install.sh, else from PyPI), and
#    flash-attn-4 for attention (ATTN_BACKEND=fa4, the default; from PyPI; without it the runs use cuDNN, loudly).
# 2. Gets the data once: FineWeb sp1024 (fetched if absent) or, failing that, the offline pydocs dataset, loudly.
# 3. Runs each seq len in SEQ_LENS (default "8192 16384 32768") for each model in MODELS (default
#    "baseline hybrid") through run_{baseline,hybrid}_long_context_single_h100.sh; without CUDA that is the
#    CPU-sized profile of the study (see launchers/common.sh), said loudly.
# 4. Writes logs/study_<STUDY_ID>/summary.md, summary.csv, plots/ and console.txt for the runs it made, and
#    prints the crossover table. Exit status: 0 when every run completed.
#
# Environment: SEQ_LENS, MODELS, STUDY_ID (default: UTC date-time), SKIP_INSTALL=1, GPU_WHEELHOUSE, and every
# launcher setting (PROFILE, NPROC, DATASET, SEED, MAX_WALLCLOCK_SECONDS, ...). Each run's log is
# logs/<default RUN_ID>_<STUDY_ID>.txt, so studies never mix. DRY_RUN=1 installs, fetches and writes nothing:
# it prints each run's settings and command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source launchers/common.sh

: "${SEQ_LENS:=8192 16384 32768}"
: "${MODELS:=baseline hybrid}"
: "${STUDY_ID:=$(date -u +%Y%m%d_%H%M%S)}"
[[ "$STUDY_ID" =~ ^[A-Za-z0-9._-]+$ ]] || lc_die "STUDY_ID='${STUDY_ID}': expected letters, digits, '.', '_' or '-'"
read -r -a seqs <<<"$SEQ_LENS"
read -r -a models <<<"$MODELS"
[[ ${#seqs[@]} -gt 0 && ${#models[@]} -gt 0 ]] || lc_die "SEQ_LENS and MODELS must not be empty"
lc_die_seq_lens() { lc_die "SEQ_LENS='${SEQ_LENS}': expected some of 8192 16384 32768"; }
for s in "${seqs[@]}"; do lc_check_seq "$s" lc_die_seq_lens; done
for m in "${models[@]}"; do lc_check_model "$m"; done

out=logs/study_$STUDY_ID
dry=${DRY_RUN:-0}
if [[ "$dry" != 1 ]]; then
    mkdir -p "$out"
    exec > >(tee -a "$out/console.txt") 2>&1
fi
echo "study: $STUDY_ID  models: ${models[*]}  seq lens: ${seqs[*]}  output: $out/"

# -- 1. software --------------------------------------------------------------------------------------
gpu_extras() {  # fla-core (+ TileLang where FLA's Triton backward is wrong), for the hybrid on CUDA
    local state fla need tl
    probe() {
        python3 - <<'PY'
import importlib, re
import torch
def ok(mod):
    try:
        importlib.import_module(mod)
        return 1
    except Exception:
        return 0
need = 0
try:
    import triton
    v = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:3])
    need = int(torch.cuda.get_device_capability(0)[0] == 9 and (3, 4, 0) <= v < (3, 7, 1))
except Exception:
    pass
print(ok("fla.ops.gated_delta_rule"), need, ok("tilelang"))
PY
    }
    read -r fla need tl <<<"$(probe)"
    if [[ $fla == 1 && ( $need == 0 || $tl == 1 ) ]]; then
        echo "study: fla-core is installed$([[ $need == 1 ]] && echo ", with TileLang (needed on this GPU)")"
        return 0
    fi
    local wh=${GPU_WHEELHOUSE:-.gpuwheels}
    if [[ -f "$wh/install.sh" ]]; then
        echo "study: installing the GPU kernels from the wheelhouse $wh"
        # shellcheck disable=SC1091
        source "$wh/install.sh" || true  # installs into /tmp/site and exports PYTHONPATH for the runs
    else
        local want=("$(grep -E '^fla-core' requirements-gpu.txt)")
        [[ $need == 1 ]] && want+=("$(grep -E '^tilelang' requirements-gpu.txt)")
        echo "study: installing ${want[*]}"
        printf '%s\n' "${want[@]}" >"$out/gpu-requirements.txt"
        lc_pip_install "$out/gpu-requirements.txt" || true
    fi
    read -r fla need tl <<<"$(probe)"
    if [[ $fla == 0 ]]; then
        lc_loud "fla-core is not importable: the hybrid runs our PyTorch gated delta rule, not the study's FLA kernels" \
            "(correct but slower, so its ms/step is not the study's). Install fla-core (requirements-gpu.txt) to fix."
    elif [[ $need == 1 && $tl == 0 && -z "${GDN_IMPL:-}" ]]; then
        export GDN_IMPL=torch
        lc_loud "This GPU's Triton gives wrong GDN gradients in FLA's backward (FLA issue 640) and TileLang is not" \
            "importable: the hybrid runs with GDN_IMPL=torch (correct, slower). Install tilelang to use FLA."
    fi
}

fa4_extras() {  # FlashAttention-4 (ATTN_BACKEND=fa4, both scripts' default) on CUDA; without it they run cuDNN
    local probe='import flash_attn.cute.interface'
    if python3 -c "$probe" 2>/dev/null; then echo "study: flash-attn-4 is installed"; return 0; fi
    local want=("$(grep -E '^flash-attn-4' requirements-gpu.txt)") dsl
    dsl=$(grep -E '^nvidia-cutlass-dsl' requirements-gpu.txt)
    # a CUDA 13 PyTorch needs the DSL's CUDA 13 libraries (the package's cu13 extra)
    if [[ "$(python3 -c 'import torch; print((torch.version.cuda or "").split(".")[0])' 2>/dev/null)" == 13 ]]; then
        dsl=${dsl/nvidia-cutlass-dsl/nvidia-cutlass-dsl[cu13]}
    fi
    want+=("$dsl")
    echo "study: installing ${want[*]}"
    printf '%s\n' "${want[@]}" >"$out/fa4-requirements.txt"
    lc_pip_install "$out/fa4-requirements.txt" || true
    python3 -c "$probe" 2>/dev/null ||
        lc_loud "flash-attn-4 is not importable: attention runs on cuDNN's SDPA (correct, ~15% slower baseline steps" \
            "at 8k-32k on an H200); each log's sdp_backends: line says why. Install it (requirements-gpu.txt) to fix."
}

if [[ "${SKIP_INSTALL:-0}" != 1 && "$dry" != 1 ]]; then
    lc_pip_install requirements.txt || LC_EXIT=1 lc_die "installing requirements.txt failed (see pip's message above)"
fi
lc_resolve_profile
if [[ "$PROFILE" == gpu && " ${models[*]} " == *" hybrid "* && "${SKIP_INSTALL:-0}" != 1 && "$dry" != 1 ]]; then
    gpu_extras
fi
if [[ "$PROFILE" == gpu && "${ATTN_BACKEND:-fa4}" == fa4 && "${SKIP_INSTALL:-0}" != 1 && "$dry" != 1 ]]; then
    fa4_extras
fi

# -- 2. data ------------------------------------------------------------------------------------------
[[ "$dry" == 1 ]] || lc_prepare_data

# -- 3. runs --------------------------------------------------------------------------------------------
list=$(mktemp)
export LC_LOG_LIST=$list RUN_ID_SUFFIX="_$STUDY_ID"
unset RUN_ID  # one log per run, named by the study
failed=()
t_study=$SECONDS
for s in "${seqs[@]}"; do
    for m in "${models[@]}"; do
        echo "study: ===== $m, seq len $s ($(date -u +%H:%M:%S) UTC) ====="
        t0=$SECONDS
        if bash "run_${m}_long_context_single_h100.sh" "$s"; then
            echo "study: $m seq $s finished in $((SECONDS - t0)) s"
        else
            failed+=("$m/$s")
            echo "study: error: $m seq $s failed after $((SECONDS - t0)) s" >&2
        fi
    done
done
echo "study: all runs took $((SECONDS - t_study)) s"

# -- 4. results -------------------------------------------------------------------------------------
mapfile -t logs <"$list"
rm -f "$list"
if [[ "$dry" != 1 && ${#logs[@]} -gt 0 ]]; then
    printf '%s\n' "${logs[@]}" >"$out/logs.txt"
    lc_summarize "$out/summary.md" "$out/plots" "${logs[@]}" || failed+=(summary)
fi
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "study: error: failed: ${failed[*]}" >&2
    exit 1
fi
[[ "$dry" == 1 ]] || echo "study: done: $out/summary.md"
