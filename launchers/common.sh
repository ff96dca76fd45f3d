# launchers/common.sh: the logic shared by the study's launchers (sourced, never run on its own).
#
#   run_{baseline,hybrid}_long_context_single_h100.sh SEQ   ->  lc_single MODEL SEQ
#   run_{baseline,hybrid}_all_long_context_single_h100.sh   ->  lc_all MODEL [SEQ ...]
#   run_study.sh, run_tests.sh                               ->  lc_pip_install, lc_resolve_profile, ...
#
# Every setting is an environment variable with a default (`: "${SEED:=1337}"` style): a value already in the
# environment always wins. Presets follow SPEC.md "Launcher presets"; without CUDA a CPU-sized profile of the
# same study runs instead (see lc_presets). Launcher-only variables:
#   PROFILE=auto|gpu|cpu   auto: gpu when torch.cuda.is_available(), else cpu (gpu on a CPU host = GPU presets)
#   NPROC=N                processes: python3 -m torch.distributed.run --standalone --nproc_per_node=N (1,2,4,8)
#   DRY_RUN=1              print the settings and the command, check/fetch no data, run nothing
#   DATASET=auto|fineweb|pydocs   auto: FineWeb, fetched if absent, else the offline pydocs dataset (loudly);
#                          fineweb: no fallback; pydocs: the offline dataset without trying the network
#   FINEWEB_TRAIN_SHARDS=N train shards fetch_fineweb.py downloads when FineWeb is absent (GPU 6, CPU 1: a 600 s 8k baseline run at our ~436 ms/step on an H200 reads ~540M tokens)
#   CPU_SEQ_DIVISOR=16     CPU profile: TRAIN_SEQ_LEN = SEQ / this (8192/16384/32768 -> 512/1024/2048)
#   RUN_ID_SUFFIX=_x       appended to the default RUN_ID (run_study.sh uses it to keep each study's logs apart)

LC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LC_SEQ_LENS=(8192 16384 32768)
LC_FINEWEB_DATA=./data/datasets/fineweb10B_sp1024
LC_FINEWEB_TOKENIZER=./data/tokenizers/fineweb_1024_bpe.model
LC_PYDOCS_DATA=./data/datasets/pydocs_sp1024
LC_PYDOCS_TOKENIZER=./data/tokenizers/pydocs_1024_bpe.model
LC_BANG="!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
LC_NOTES=()  # lines for the console and the head of logs/<RUN_ID>.txt

# -- messages ---------------------------------------------------------------------------------------
# Every launcher line starts with "launcher:", a prefix tools/log_parser.py does not read, so the lines
# can head a training log without being taken for the script's output.
lc_note() { local l; for l in "$@"; do LC_NOTES+=("launcher: $l"); echo "launcher: $l"; done; }
lc_loud() { lc_note "$LC_BANG"; local l; for l in "$@"; do lc_note "!!! $l"; done; lc_note "$LC_BANG"; }
lc_die() { echo "launcher: error: $*" >&2; exit "${LC_EXIT:-2}"; }

lc_usage_single() {
    echo "usage: $(basename "$0") {8192|16384|32768}" >&2
    echo "  settings come from the environment (e.g. SEED=1 NPROC=2 DRY_RUN=1); --help lists them" >&2
    exit 2
}

lc_usage_all() {
    echo "usage: $(basename "$0") [8192|16384|32768 ...]   (default: 8192 16384 32768, in turn)" >&2
    echo "  settings come from the environment (e.g. SEED=1 NPROC=2 DRY_RUN=1); --help lists them" >&2
    exit 2
}

lc_help() {  # the launcher's own header, then the settings every launcher reads
    sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"
    echo
    sed -n '/^# Every setting/,/^$/s/^# \{0,1\}//p' "$LC_ROOT/launchers/common.sh"
    exit 0
}

lc_check_seq() {  # SEQ usage-function
    local s
    for s in "${LC_SEQ_LENS[@]}"; do [[ "$1" == "$s" ]] && return 0; done
    echo "launcher: error: unsupported sequence length '$1'" >&2
    "$2"
}

lc_check_model() {
    case "$1" in baseline|hybrid) ;; *) lc_die "unknown model '$1' (expected baseline or hybrid)" ;; esac
}

lc_script() { [[ "$1" == baseline ]] && echo train_gpt.py || echo train_gpt_gdn.py; }

# -- profile: GPU presets or the CPU-sized study ------------------------------------------------------
lc_resolve_profile() {  # sets and exports PROFILE=gpu|cpu
    case "${PROFILE:-auto}" in
        gpu|cpu) ;;
        auto)
            local out rc=0
            out=$(python3 -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")' 2>/dev/null) || rc=$?
            [[ "$out" == gpu ]] && export LC_CUDA=1
            if [[ $rc -ne 0 ]]; then
                [[ "${DRY_RUN:-0}" == 1 ]] || LC_EXIT=1 lc_die "PyTorch is not importable by python3: run" \
                    "'bash run_study.sh' (installs what is missing) or 'python3 -m pip install -r requirements.txt'"
                out=cpu
            fi
            PROFILE=$out ;;
        *) lc_die "PROFILE='${PROFILE}': expected auto, gpu or cpu" ;;
    esac
    export PROFILE
}

lc_default_run_id() {  # MODEL SEQ PROFILE
    local name; [[ "$1" == baseline ]] && name=baseline || name=hybrid_gdn
    if [[ "$3" == gpu ]]; then echo "${name}_1xh100_600s_seq$2"; else echo "${name}_cpu_seq$2"; fi
}

# GPU table (SPEC.md): batch tokens, momentum warm-up steps, warm-down steps, seed.
lc_gpu_row() {
    case "$1:$2" in
        baseline:8192)  echo "393216 190 381 1337" ;;
        baseline:16384) echo "393216 118 236 1338" ;;
        baseline:32768) echo "524288 50 100 1339" ;;
        hybrid:8192)    echo "393216 160 320 1340" ;;
        hybrid:16384)   echo "393216 104 208 1341" ;;
        hybrid:32768)   echo "524288 79 158 1342" ;;
    esac
}

# CPU profile: momentum warm-up and warm-down scaled like the GPU table (~0.18 and ~0.36 of the steps one run
# gets in its budget), from a full CPU study measured on 2 idle cores with MAX_WALLCLOCK_SECONDS=90 (ms/step
# and steps in the comments). The warm-down is placed by time anyway, so the exact step count matters little.
lc_cpu_row() {
    case "$1:$2" in
        baseline:512)  echo "5 9" ;;   # ~3,500 ms/step, 26 steps
        baseline:1024) echo "4 9" ;;   # ~3,700 ms/step, 25 steps
        baseline:2048) echo "3 6" ;;   # ~5,500 ms/step, 17 steps
        hybrid:512)    echo "3 7" ;;   # ~4,800 ms/step, 19 steps
        hybrid:1024)   echo "3 5" ;;   # ~6,400 ms/step, 14 steps
        hybrid:2048)   echo "2 4" ;;   # ~7,800 ms/step, 12 steps
        *)             echo "3 6" ;;   # another CPU_SEQ_DIVISOR
    esac
}

# lc_presets MODEL SEQ: fills LC_KEYS (print order) and LC_VALUE/LC_FROM (value and where it came from),
# exports them all. A non-empty value already in the environment wins over the preset.
lc_presets() {
    local model=$1 seq=$2 batch warm down seed
    LC_KEYS=() ; declare -gA LC_VALUE=() LC_FROM=()
    read -r batch warm down seed <<<"$(lc_gpu_row "$model" "$seq")"
    if [[ "$PROFILE" == gpu ]]; then
        LC_SEQ_LEN=$seq
    else
        local div=${CPU_SEQ_DIVISOR:-16}
        [[ "$div" =~ ^[1-9][0-9]*$ && $((seq % div)) -eq 0 ]] \
            || lc_die "CPU_SEQ_DIVISOR='${div}': expected a positive divisor of $seq"
        LC_SEQ_LEN=$((seq / div))
        read -r warm down <<<"$(lc_cpu_row "$model" "$LC_SEQ_LEN")"
        batch=16384
    fi
    # The sequence length is the launcher's argument: a different TRAIN_SEQ_LEN in the environment would
    # silently turn the 8k run into something else, so it is refused rather than obeyed.
    if [[ -n "${TRAIN_SEQ_LEN:-}" && "$TRAIN_SEQ_LEN" != "$LC_SEQ_LEN" ]]; then
        lc_die "TRAIN_SEQ_LEN=$TRAIN_SEQ_LEN is set in the environment but the argument $seq means" \
            "TRAIN_SEQ_LEN=$LC_SEQ_LEN here; unset it (choose the length by the argument)"
    fi
    lc_set TRAIN_SEQ_LEN "$LC_SEQ_LEN"
    lc_set RUN_ID "$(lc_default_run_id "$model" "$LC_SEQ_LEN" "$PROFILE")${RUN_ID_SUFFIX:-}"
    lc_set SEED "$seed"
    lc_set DATA_PATH "$(lc_default_data)"
    lc_set TOKENIZER_PATH "$(lc_tokenizer_for "$DATA_PATH")"
    lc_set VOCAB_SIZE 1024
    lc_set TRAIN_BATCH_TOKENS "$batch"
    lc_set MUON_MOMENTUM_WARMUP_STEPS "$warm"
    lc_set WARMDOWN_ITERS "$down"
    lc_set TIED_EMBED_LR 0.030
    lc_set MATRIX_LR 0.020
    lc_set SCALAR_LR 0.020
    lc_set MUON_MOMENTUM 0.99
    lc_set MUON_MOMENTUM_WARMUP_START 0.92
    if [[ "$PROFILE" == gpu ]]; then
        lc_set MAX_WALLCLOCK_SECONDS 600
        lc_set WARMUP_STEPS 20
        lc_set TRAIN_LOG_EVERY 10
        lc_set VAL_LOSS_EVERY 50
    else
        # 90 s: one run then takes 130-160 s with start-up, warm-up and evaluations; the six took 832 s.
        lc_set MAX_WALLCLOCK_SECONDS 90
        lc_set WARMUP_STEPS 2
        lc_set TRAIN_LOG_EVERY 5
        lc_set VAL_LOSS_EVERY 10  # a run has only ~13-29 steps: a few points on its val curve
        lc_set MODEL_DIM "$([[ "$model" == baseline ]] && echo 128 || echo 112)"
        lc_set NUM_HEADS 4
        lc_set NUM_KV_HEADS 2
        lc_set VAL_MAX_TOKENS 65536
        # Small eval batches: on 2 cores the default (65,536 tokens per forward) made evaluation ~5x slower.
        lc_set VAL_BATCH_SIZE 16384
    fi
}

lc_default_data() { [[ "${DATASET:-auto}" == pydocs ]] && echo "$LC_PYDOCS_DATA" || echo "$LC_FINEWEB_DATA"; }

# The tokenizer follows the data: a dataset is only read correctly with the tokenizer that made it.
lc_tokenizer_for() { [[ "$1" == "$LC_PYDOCS_DATA" ]] && echo "$LC_PYDOCS_TOKENIZER" || echo "$LC_FINEWEB_TOKENIZER"; }

lc_set() {  # NAME DEFAULT
    local name=$1
    if [[ -n "${!name:-}" ]]; then LC_FROM[$name]=environment; else printf -v "$name" '%s' "$2"; LC_FROM[$name]=preset; fi
    export "${name?}"
    LC_VALUE[$name]=${!name}
    LC_KEYS+=("$name")
}

# Settings the training script reads that the user set but the launcher has no preset for (COMPILE,
# GDN_IMPL, ITERATIONS, ...): read from the script itself, so the list never goes stale.
lc_extra_settings() {  # SCRIPT
    local name
    for name in $(grep -oE 'env_(str|int|float|choice)\("[A-Z0-9_]+"' "$LC_ROOT/$1" | grep -oE '[A-Z0-9_]{2,}' | sort -u); do
        [[ -n "${LC_VALUE[$name]+x}" || -z "${!name:-}" ]] && continue
        LC_KEYS+=("$name"); LC_VALUE[$name]=${!name}; LC_FROM[$name]=environment
    done
}

# -- data -------------------------------------------------------------------------------------------
lc_have_data() {  # DATA_DIR TOKENIZER
    [[ -f "$2" ]] && compgen -G "$1/*_train_*.bin" >/dev/null && compgen -G "$1/*_val_*.bin" >/dev/null
}

# Makes DATA_PATH/TOKENIZER_PATH usable: FineWeb if present, else fetched, else the offline pydocs dataset
# (built if absent), said loudly. Paths the user named must exist: they are never swapped for others.
lc_ensure_data() {
    local mode=${DATASET:-auto} rc=0 why
    case "$mode" in auto|fineweb|pydocs) ;; *) lc_die "DATASET='${mode}': expected auto, fineweb or pydocs" ;; esac
    if [[ "$mode" != pydocs ]] && lc_have_data "$DATA_PATH" "$TOKENIZER_PATH"; then
        lc_dataset_note; return 0
    fi
    if [[ "$DATA_PATH" != "$LC_FINEWEB_DATA" && "$DATA_PATH" != "$LC_PYDOCS_DATA" ]] \
        || [[ "$TOKENIZER_PATH" != "$LC_FINEWEB_TOKENIZER" && "$TOKENIZER_PATH" != "$LC_PYDOCS_TOKENIZER" ]]; then
        lc_have_data "$DATA_PATH" "$TOKENIZER_PATH" && { lc_dataset_note; return 0; }
        LC_EXIT=1 lc_die "DATA_PATH=$DATA_PATH / TOKENIZER_PATH=$TOKENIZER_PATH: expected *_train_*.bin and" \
            "*_val_*.bin shards and a tokenizer file there (unset both to get FineWeb or the offline dataset)"
    fi
    if [[ "$mode" == pydocs ]]; then
        why="DATASET=pydocs was asked for"
    else
        local shards=${FINEWEB_TRAIN_SHARDS:-$([[ "$PROFILE" == gpu ]] && echo 6 || echo 1)}
        lc_note "FineWeb sp1024 is not in $LC_FINEWEB_DATA: fetching it (python3 data/fetch_fineweb.py --train-shards $shards)"
        python3 data/fetch_fineweb.py --train-shards "$shards" || rc=$?
        if [[ $rc -eq 0 ]] && lc_have_data "$LC_FINEWEB_DATA" "$LC_FINEWEB_TOKENIZER"; then
            export DATA_PATH=$LC_FINEWEB_DATA TOKENIZER_PATH=$LC_FINEWEB_TOKENIZER
            return 0
        fi
        case $rc in
            2) why="FineWeb is not available: the Hugging Face Hub is unreachable (data/fetch_fineweb.py exit 2)" ;;
            0) why="FineWeb is not available: data/fetch_fineweb.py ended without complete files" ;;
            *) why="FineWeb is not available: data/fetch_fineweb.py failed (exit $rc)" ;;
        esac
        [[ "$mode" == fineweb ]] && LC_EXIT=1 lc_die "$why; DATASET=fineweb forbids the fallback"
    fi
    if ! lc_have_data "$LC_PYDOCS_DATA" "$LC_PYDOCS_TOKENIZER"; then
        lc_note "building the offline dataset: python3 data/build_pydocs_dataset.py"
        python3 data/build_pydocs_dataset.py || LC_EXIT=1 lc_die "data/build_pydocs_dataset.py failed"
    fi
    export DATA_PATH=$LC_PYDOCS_DATA TOKENIZER_PATH=$LC_PYDOCS_TOKENIZER
    export LC_DATA_WHY=$why
    lc_dataset_note
}

lc_prepare_data() {  # once before several runs: the default paths a single launcher would use, made usable
    [[ -n "${DATA_PATH:-}" ]] || DATA_PATH=$(lc_default_data)
    [[ -n "${TOKENIZER_PATH:-}" ]] || TOKENIZER_PATH=$(lc_tokenizer_for "$DATA_PATH")
    export DATA_PATH TOKENIZER_PATH
    lc_ensure_data
}

lc_dataset_note() {  # loud whenever the data is not FineWeb; once per launcher
    local name; name=$(basename "${DATA_PATH%/}")
    [[ "$name" == fineweb10B_sp1024 || -n "${LC_DATASET_NOTED:-}" ]] && return 0
    LC_DATASET_NOTED=1
    lc_loud "DATASET IS NOT FINEWEB: training on $name ($DATA_PATH)." \
        ${LC_DATA_WHY:+"Why: $LC_DATA_WHY."} \
        "Losses and val_bpb are NOT comparable with the study's FineWeb numbers." \
        "For FineWeb: python3 data/fetch_fineweb.py (needs network), then rerun."
}

# -- one run ----------------------------------------------------------------------------------------
lc_single() {  # MODEL SEQ
    local model=$1; shift
    lc_check_model "$model"
    [[ $# -eq 1 ]] || lc_usage_single
    [[ "$1" == -h || "$1" == --help ]] && lc_help
    lc_check_seq "$1" lc_usage_single
    local seq=$1 nproc=${NPROC:-1} script; script=$(lc_script "$model")
    case "$nproc" in 1|2|4|8) ;; *) lc_die "NPROC='${nproc}': expected 1, 2, 4 or 8 (a divisor of 8)" ;; esac
    cd "$LC_ROOT"
    lc_resolve_profile
    lc_presets "$model" "$seq"
    lc_extra_settings "$script"

    if [[ "$PROFILE" == cpu ]]; then
        lc_loud "CPU PROFILE: no CUDA GPU (or PROFILE=cpu), so this is a CPU-sized version of the study, not the study:" \
            "MODEL_DIM=${MODEL_DIM}, NUM_HEADS=${NUM_HEADS}/${NUM_KV_HEADS} KV, the same 9 layers (and GDN layers)," \
            "context $seq -> TRAIN_SEQ_LEN=${TRAIN_SEQ_LEN} (1/${CPU_SEQ_DIVISOR:-16}: the 8k:16k:32k ratio kept)," \
            "TRAIN_BATCH_TOKENS=${TRAIN_BATCH_TOKENS}, ${MAX_WALLCLOCK_SECONDS} s of training, val on VAL_MAX_TOKENS=${VAL_MAX_TOKENS}."
    elif [[ "${DRY_RUN:-0}" != 1 && -z "${LC_CUDA:-}" ]] && ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        lc_loud "PROFILE=gpu without a CUDA GPU: the full-size study will run on the CPU (very slow)."
    fi
    if [[ "${DRY_RUN:-0}" != 1 ]]; then
        lc_ensure_data
        if [[ "${LC_VALUE[DATA_PATH]}" != "$DATA_PATH" || ( -n "${LC_DATA_WHY:-}" && "$DATA_PATH" == "$LC_PYDOCS_DATA" ) ]]; then
            LC_VALUE[DATA_PATH]=$DATA_PATH; LC_VALUE[TOKENIZER_PATH]=$TOKENIZER_PATH
            LC_FROM[DATA_PATH]="offline fallback"; LC_FROM[TOKENIZER_PATH]="offline fallback"
        fi
    fi

    local cmd=(python3 -m torch.distributed.run --standalone "--nproc_per_node=$nproc" "$script")
    lc_note "model=$model seq_len_arg=$seq profile=$PROFILE nproc=$nproc log=logs/${RUN_ID}.txt"
    lc_note "settings:"
    local k
    for k in "${LC_KEYS[@]}"; do lc_note "  $k=${LC_VALUE[$k]}  (${LC_FROM[$k]})"; done
    lc_note "command: ${cmd[*]}"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        echo "launcher: DRY_RUN=1: no data checked, nothing run"
        return 0
    fi

    mkdir -p logs
    local log="logs/${RUN_ID}.txt"
    lc_note "started $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${HOSTNAME:-$(uname -n)}"
    printf '%s\n' "${LC_NOTES[@]}" >>"$log"   # the script appends its own lines to the same file
    [[ -n "${LC_LOG_LIST:-}" ]] && echo "$log" >>"$LC_LOG_LIST"
    local rc=0
    "${cmd[@]}" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "launcher: training exited with status $rc" | tee -a "$log" >&2
    fi
    return $rc
}

# -- the three lengths in turn, then the summary -----------------------------------------------------------
lc_all() {  # MODEL [SEQ ...]
    local model=$1; shift
    lc_check_model "$model"
    local seqs=("$@") s
    [[ $# -gt 0 && ( "$1" == -h || "$1" == --help ) ]] && lc_help
    [[ $# -eq 0 ]] && seqs=("${LC_SEQ_LENS[@]}")
    for s in "${seqs[@]}"; do lc_check_seq "$s" lc_usage_all; done
    cd "$LC_ROOT"
    lc_resolve_profile
    [[ "${DRY_RUN:-0}" == 1 ]] || lc_prepare_data
    local list; list=$(mktemp); export LC_LOG_LIST=$list
    local failed=() prefix=${RUN_ID:-}  # a RUN_ID given here names the runs: <RUN_ID>_seq<N>
    for s in "${seqs[@]}"; do
        echo "launcher: ===== $model, seq len $s ====="
        if ( if [[ -n "$prefix" ]]; then export RUN_ID="${prefix}_seq$s"; else unset RUN_ID; fi
             bash "$LC_ROOT/run_${model}_long_context_single_h100.sh" "$s" ); then :; else failed+=("$s"); fi
    done
    local logs=(); mapfile -t logs <"$list"; rm -f "$list"
    if [[ "${DRY_RUN:-0}" != 1 && ${#logs[@]} -gt 0 ]]; then
        lc_summarize "logs/summary_${model}.md" "logs/plots/${model}" "${logs[@]}" || failed+=(summary)
    fi
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "launcher: error: failed: ${failed[*]}" >&2
        return 1
    fi
}

lc_summarize() {  # MARKDOWN PLOT_DIR LOG...
    local md=$1 plots=$2; shift 2
    echo "launcher: summarising $# log(s): python3 tools/summarize_logs.py ... --markdown $md --plots $plots"
    if python3 tools/summarize_logs.py "$@" --markdown "$md" --csv "${md%.md}.csv" --plots "$plots"; then
        echo "launcher: wrote $md, ${md%.md}.csv and $plots/"
        awk '/^## Crossover/{on=1} /^## / && !/^## Crossover/{on=0} on' "$md"
    else
        echo "launcher: error: tools/summarize_logs.py failed" >&2
        return 1
    fi
}

# -- installing -------------------------------------------------------------------------------------
# Installs the lines of a requirements file whose distribution is missing, and nothing else: versions the
# user already has stay (a GPU host's CUDA PyTorch above all), and an installed PyTorch is pinned as a
# constraint so that no dependency can replace it.
lc_pip_install() {  # REQUIREMENTS_FILE
    local req=$1 missing tmp ver rc=0
    missing=$(python3 - "$req" <<'PY'
import importlib.metadata as md, re, sys
for line in open(sys.argv[1], encoding="utf-8"):
    spec = line.split("#", 1)[0].strip()
    if not spec or spec.startswith("-"):
        continue
    name = re.match(r"[A-Za-z0-9._-]+", spec).group(0)
    pinned = spec.split("==", 1)[1].split(";")[0].strip() if "==" in spec else None
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(spec)
        continue
    if pinned and have.split("+")[0] != pinned:
        print(f"launcher: keeping installed {name} {have} (tested: {pinned})", file=sys.stderr)
PY
) || return 1
    if [[ -z "$missing" ]]; then
        echo "launcher: everything in $req is installed"
        return 0
    fi
    tmp=$(mktemp -d)
    printf '%s\n' "$missing" >"$tmp/req.txt"
    : >"$tmp/constraints.txt"
    if ver=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null); then
        echo "torch==$ver" >"$tmp/constraints.txt"
    fi
    echo "launcher: installing from $req: $(echo $missing)"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --retries 2 --timeout 30 \
        -c "$tmp/constraints.txt" -r "$tmp/req.txt" || rc=$?
    rm -rf "$tmp"
    return $rc
}
