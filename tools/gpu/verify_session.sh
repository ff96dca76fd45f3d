#!/usr/bin/env bash
# One machine's worth of verification for a new version of the scripts against an older one (issue 5), in the
# order that pays a fresh machine's TileLang JIT once: our state recurrences against FLA's
# (tools/gpu/bench_state_chain.py, no JIT), our WY backward against FLA's path (tools/gpu/bench_wy_bwd.py, no JIT),
# our dq/dk/dw/dg kernel against FLA's (tools/gpu/bench_dqkwg.py; on Hopper FLA's side is TileLang's: it pays the JIT),
# our output kernel against FLA's (tools/gpu/bench_fwd_o.py, no JIT),
# the GDN check (tools/check_gdn_fla.py: FLA paths, the state-saving op, our conv op), the conv kernels old vs
# new (tools/bench_conv_kernels.py, x as a slice of the fused projection), step-time A/B runs through
# tools/gpu/ab_session.sh, then profiles with CUDA graphs and the idle-GPU account (tools/gpu/profile_session.sh).
# Each stage writes under OUT_DIR and touches OUT_DIR/<STAGE>.done, so a run started with setsid nohup can be
# collected stage by stage (tools/gpu/poll.sh).
# Usage: bash tools/gpu/verify_session.sh OUT_DIR OLD_DIR
#   env: ITEMS (ab_session items; default: the hybrid at 8k, 16k, 32k, new vs OLD_DIR) STEPS (10)
#        STAGES ("gdn conv ab prof"; also "chain", "wy", "dqkwg", "fwdo") PROF_RUNS ("hybrid:8192 baseline:8192"; items as profile_session.sh RUNS) TOKENIZER_PATH DATA_PATH
#        CHAIN_SEGMENTS (the chain stage's --segments, e.g. 0,16,32: GDN_CHAIN_SEGMENT values; default 0)
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -ne 2 ]; then echo "usage: bash tools/gpu/verify_session.sh OUT_DIR OLD_DIR" >&2; exit 2; fi
OUT=$1 OLD=$2
[ -f "$OLD/train_gpt_gdn.py" ] || { echo "OLD_DIR $OLD: no train_gpt_gdn.py there" >&2; exit 2; }
STAGES=${STAGES:-gdn conv ab prof}
for st in $STAGES; do
  case "$st" in chain|wy|dqkwg|fwdo|gdn|conv|ab|prof) ;; *) echo "STAGES: unknown stage '$st' (expected chain, wy, dqkwg, fwdo, gdn, conv, ab, prof)" >&2; exit 2 ;; esac
done
SEGMENTS=${CHAIN_SEGMENTS:-0}
if ! [[ "$SEGMENTS" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "CHAIN_SEGMENTS=$SEGMENTS: expected comma-separated whole numbers" >&2; exit 2
fi
ITEMS=${ITEMS:-hybrid:8192:new hybrid:8192:old:$OLD hybrid:16384:new hybrid:16384:old:$OLD hybrid:32768:new hybrid:32768:old:$OLD}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for st in $STAGES; do
  case "$st" in
    chain) python3 tools/gpu/bench_state_chain.py --segments "$SEGMENTS" > "$OUT/bench_state_chain.txt" 2>&1
           echo "chain: exit $?"; grep "^state_chain" "$OUT/bench_state_chain.txt" ;;
    wy) python3 tools/gpu/bench_wy_bwd.py > "$OUT/bench_wy_bwd.txt" 2>&1
        echo "wy: exit $?"; grep -E "^(check|wy_bwd)" "$OUT/bench_wy_bwd.txt" ;;
    dqkwg) python3 tools/gpu/bench_dqkwg.py > "$OUT/bench_dqkwg.txt" 2>&1
           echo "dqkwg: exit $?"; grep -E "^(check|dqkwg)" "$OUT/bench_dqkwg.txt" ;;
    fwdo) python3 tools/gpu/bench_fwd_o.py > "$OUT/bench_fwd_o.txt" 2>&1
          echo "fwdo: exit $?"; grep -E "^(check|fwd_o)" "$OUT/bench_fwd_o.txt" ;;
    gdn) python3 tools/check_gdn_fla.py --seq-lens 100,2048 > "$OUT/gdn_check.txt" 2>&1
         echo "gdn: exit $? ($(grep -m1 "^gdn_check:" "$OUT/gdn_check.txt" || echo "no verdict line"))" ;;
    conv) python3 tools/bench_conv_kernels.py --old "$OLD" --x-row-width 2032 > "$OUT/conv_kernels.txt" 2>&1
          echo "conv: exit $?"; grep -E "^(conv_time|conv_check)" "$OUT/conv_kernels.txt" ;;
    ab) # shellcheck disable=SC2086
        STEPS=${STEPS:-10} bash tools/gpu/ab_session.sh "$OUT/ab" $ITEMS ;;
    prof) CUDA_GRAPHS=auto RUNS="${PROF_RUNS:-hybrid:8192 baseline:8192}" bash tools/gpu/profile_session.sh "$OUT/prof" ;;
  esac
  touch "$OUT/$st.done"
done
touch "$OUT/ALL.done"
