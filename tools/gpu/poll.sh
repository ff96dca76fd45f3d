#!/usr/bin/env bash
# For a device call that collects a background session: every 15 s, pack SRC_DIR into $OUT/results.tgz (one file:
# a call brings back only a few), until SRC_DIR/DONE_FILE exists or SECONDS have passed (keep SECONDS well under
# the call's limit, which is the device time left); then print SRC_DIR's listing and the last lines of LOG.
# Usage (in a device call): bash tools/gpu/poll.sh SRC_DIR SECONDS [DONE_FILE (ALL.done)] [LOG]
set -u
if [ $# -lt 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then echo "usage: bash tools/gpu/poll.sh SRC_DIR SECONDS [DONE_FILE] [LOG]" >&2; exit 2; fi
[ -n "${OUT:-}" ] || { echo "poll.sh: \$OUT is not set (run it inside a device call)" >&2; exit 2; }
SRC=$1 END=$((SECONDS + $2)) DONE=${3:-ALL.done} LOG=${4:-}
# a fresh machine (the held one was taken back) has no SRC: say so at once instead of waiting out SECONDS
[ -d "$SRC" ] || { echo "poll.sh: $SRC does not exist on this machine (a fresh one? the session must be started again)" >&2; exit 3; }
while :; do
  tar czf "$OUT/results.tgz.tmp" -C "$SRC" . 2>/dev/null && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
  [ -f "$SRC/$DONE" ] || [ $((SECONDS + 15)) -ge $END ] && break
  sleep 15
done
ls "$SRC"; [ -n "$LOG" ] && tail -20 "$LOG"
exit 0
