#!/usr/bin/env bash
# For a device session longer than one call: copy the tree as it is now into SNAP_DIR (without .git, the datasets,
# the wheelhouses and caches that calls carry), since later calls re-sync the working tree and a run must not see
# its code change under it; then run CMD there under setsid nohup, its output in LOG, and write CMD's exit status
# to DONE_FILE when it ends. Returns at once; collect with tools/gpu/poll.sh in later calls, chained without pause
# (an idle machine is taken back after ~30 s, and the session with it).
# Usage (in a device call, after `source .gpuwheels/install.sh`):
#   bash tools/gpu/detach.sh SNAP_DIR LOG DONE_FILE CMD [ARG...]
#   e.g. bash tools/gpu/detach.sh /root/snap /root/s.log /root/s/FIN env STAGES=ab \
#          ITEMS="hybrid:32768:a:. hybrid:32768:b:.:GDN_STATE_CHAIN=bwd" bash tools/gpu/verify_session.sh /root/s .
set -uo pipefail  # a failed tar on either side of the copy stops it
if [ $# -lt 4 ]; then echo "usage: bash tools/gpu/detach.sh SNAP_DIR LOG DONE_FILE CMD [ARG...]" >&2; exit 2; fi
SNAP=$(realpath -m "$1") LOG=$(realpath -m "$2") DONE=$(realpath -m "$3"); shift 3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
case "$SNAP/" in
  "$ROOT"/*) echo "SNAP_DIR $SNAP: inside the tree it copies ($ROOT); pick a directory outside" >&2; exit 2 ;;
esac
if [ -e "$SNAP" ] && [ -n "$(ls -A "$SNAP" 2>/dev/null)" ]; then
  echo "SNAP_DIR $SNAP: exists and is not empty (one snapshot per session; pick a new directory)" >&2; exit 2
fi
for f in "$LOG" "$DONE"; do
  [ -d "$(dirname "$f")" ] || mkdir -p "$(dirname "$f")" || { echo "cannot create the directory of $f" >&2; exit 2; }
done
rm -f "$DONE"
cd "$ROOT"
mkdir -p "$SNAP" && tar cf - --exclude=./.gpuwheels --exclude=./.fa4 --exclude=./.cache --exclude=./.git \
  --exclude=./data/datasets . | tar xf - -C "$SNAP" || { echo "SNAP_DIR $SNAP: copying the tree failed" >&2; exit 1; }
cd "$SNAP"
# the command's exit status is kept in DONE_FILE: a finished session and a failed one look different to poll.sh
setsid nohup bash -c '"$@"; echo "exit $?" > "$0"' "$DONE" "$@" > "$LOG" 2>&1 < /dev/null &
echo "detached: pid $! in $SNAP, log $LOG, done-file $DONE"
