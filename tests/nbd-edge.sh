#!/usr/bin/env bash
# nbd-edge.sh — protocol edge cases with python3-libnbd (strict mode off:
# unaligned, out of range, zero-length, unknown flags, FAST_ZERO, writes on
# a read-only export, 256 requests in flight, option haggling: LIST, INFO,
# GO, metadata contexts, a 5000-byte name, ABORT, old-style clients).
. "$(dirname "$0")/nbd/functions.sh"
requires_pynbd

write_conf "$tmp/a.conf"
start_daemon "$tmp/a.conf"
fd0=$(fd_count)

RWIMG=$tmp/disk.img $PY "$SRCDIR/tests/nbd/edge.py" "$tmp/nbd.sock" "$DISK" "$RODISK" \
  || fail "edge cases"

alive || fail "altpathd died"
fd1=$(fd_count_settled "$fd0")
[ "$fd1" -le "$fd0" ] || fail "descriptors leaked: $fd0 before, $fd1 after"
stop_daemon
echo "PASS"
