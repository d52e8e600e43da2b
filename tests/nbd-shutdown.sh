#!/usr/bin/env bash
# nbd-shutdown.sh — SIGTERM while clients are busy:
#  1. writes in flight: altpathd exits 0, and every write it acknowledged
#     is in the image (in-flight requests finish and their replies go out
#     before the socket closes);
#  2. idle clients, one in the handshake and one in transmission: a quick
#     exit (they are not waited for);
#  3. a client that never reads its replies: exit 0 once the shutdown
#     grace period (10 s) is over, not a hang.
. "$(dirname "$0")/nbd/functions.sh"
requires_pynbd

DISK_SIZE=32M write_conf "$tmp/a.conf"

# ---- 1. writes in flight
start_daemon "$tmp/a.conf"
$PY "$SRCDIR/tests/nbd/shutdown.py" writer "$tmp/nbd.sock" "$DISK" "$tmp/acked" \
  > "$tmp/writer.out" 2>&1 &
wpid=$!
sleep 0.5
stop_daemon 15
wait "$wpid" || { cat "$tmp/writer.out"; fail "writer client"; }
cat "$tmp/writer.out"
n=$(grep -c . "$tmp/acked")
[ "$n" -gt 0 ] || fail "no write was acknowledged before the shutdown"
$PY - "$tmp/disk.img" "$tmp/acked" <<'EOF' || fail "an acknowledged write is not in the image"
import sys
img = open(sys.argv[1], "rb")
bad = 0
for line in open(sys.argv[2]):
    if not line.strip():
        continue
    i = int(line)
    img.seek(i * 4096)
    if img.read(4096) != bytes([(i * 7 + 1) & 0xff]) * 4096:
        bad += 1
print("checked acknowledged writes, %d missing" % bad)
sys.exit(1 if bad else 0)
EOF

# ---- 2. idle clients
start_daemon "$tmp/a.conf"
$PY "$SRCDIR/tests/nbd/shutdown.py" idle "$tmp/nbd.sock" "$DISK" > "$tmp/idle.out" 2>&1 &
ipid=$!
for _ in $(seq 1 50); do grep -q idle "$tmp/idle.out" && break; sleep 0.1; done
t0=$(date +%s%N)
stop_daemon 5
t1=$(date +%s%N)
echo "idle clients: stopped in $(( (t1 - t0) / 1000000 )) ms"
wait "$ipid"
grep -q "closed by the server" "$tmp/idle.out" || { cat "$tmp/idle.out"; fail "idle client not closed"; }

# ---- 3. a client that does not read
start_daemon "$tmp/a.conf"
$PY "$SRCDIR/tests/nbd/shutdown.py" stall "$tmp/nbd.sock" "$DISK" > "$tmp/stall.out" 2>&1 &
spid=$!
for _ in $(seq 1 50); do grep -q flooded "$tmp/stall.out" && break; sleep 0.1; done
sleep 0.5
t0=$(date +%s%N)
stop_daemon 20
t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
echo "stalled client: stopped in $ms ms"
[ "$ms" -ge 9000 ] || fail "stopped in $ms ms: the grace period was not honoured"
grep -q "still sending" "$tmp/altpathd.log" || fail "no grace-period message"
kill "$spid" 2>/dev/null
wait "$spid" 2>/dev/null
echo "PASS"
