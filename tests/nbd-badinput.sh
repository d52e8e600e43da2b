#!/usr/bin/env bash
# nbd-badinput.sh — hostile input on a raw socket (tests/nbd/badinput.py):
# wrong magics, truncated packets, absurd lengths, unknown options with
# payloads, disconnects in the middle of a WRITE payload, ABORT/DISC and an
# immediate close, a client that stops reading its replies.  The daemon
# must stay up, answer what the spec asks, and leak no descriptor.
. "$(dirname "$0")/nbd/functions.sh"

write_conf "$tmp/a.conf"
start_daemon "$tmp/a.conf"
fd0=$(fd_count)

$PY "$SRCDIR/tests/nbd/badinput.py" "$tmp/nbd.sock" "$DISK" || fail "bad input cases"

alive || fail "altpathd died"
fd1=$(fd_count_settled "$fd0")
[ "$fd1" -le "$fd0" ] || { ls -l "/proc/$DPID/fd"; fail "descriptors leaked: $fd0 before, $fd1 after"; }
# Threads: back to the daemon's own (no connection thread left behind).
threads=$(ls "/proc/$DPID/task" | wc -l)
echo "threads after: $threads"
grep -q "error" "$tmp/altpathd.log" && { cat "$tmp/altpathd.log"; fail "errors in the log"; }
stop_daemon
echo "PASS"
