#!/usr/bin/env bash
# accept-limits.sh — altpathd out of file descriptors: with a hard limit
# of 64 and more clients than that holding NBD connections open, the NBD
# listener and the control socket each say once that they cannot accept
# (not once per try), the daemon does not spin on its readable listeners,
# and once the clients go it accepts again and says so.
. "$(dirname "$0")/nbd/functions.sh"
requires prlimit nbdinfo

P=$(free_port)
LISTEN="address = unix:$tmp/nbd.sock|address = 127.0.0.1:$P;tls = off"
EXTRA_CONF="[control];socket = $tmp/control.sock"
write_conf "$tmp/a.conf"
# start_daemon with the limit: prlimit sets it and execs altpathd, which
# raises its soft limit only as far as this hard one.
prlimit --nofile=64:64 "$BUILD/altpathd" --config "$tmp/a.conf" > "$tmp/altpathd.log" 2>&1 &
DPID=$!
for _ in $(seq 1 100); do
  grep -q "ready" "$tmp/altpathd.log" 2>/dev/null && break
  kill -0 "$DPID" 2>/dev/null || { DPID=; fail "altpathd exited at start"; }
  sleep 0.1
done
[ "$(nbdinfo --size "nbd://127.0.0.1:$P/ALPHA%24DKA100")" = 67108864 ] \
  || fail "nbdinfo before the flood"

# 100 clients that connect and wait (in the handshake), from one process.
$PY - "$P" > "$tmp/flood.out" 2>&1 <<'PY' &
import socket, sys, time
socks = []
for _ in range(100):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    socks.append(s)
print("connected", len(socks), flush=True)
time.sleep(4)
for s in socks:
    s.close()
print("closed", flush=True)
PY
FLOOD=$!
for _ in $(seq 1 50); do grep -q connected "$tmp/flood.out" && break; sleep 0.1; done
grep -q connected "$tmp/flood.out" || fail "the flood did not connect: $(cat "$tmp/flood.out")"
sleep 0.5
ticks0=$(awk '{ print $14 + $15 }' "/proc/$DPID/stat")
# The control socket cannot accept either (its client waits in the
# backlog, then times out).
timeout 5 "$BUILD/altpath" --socket "$tmp/control.sock" --timeout 1 ping \
  > /dev/null 2>&1
sleep 1.5
ticks1=$(awk '{ print $14 + $15 }' "/proc/$DPID/stat")
n_nbd=$(grep -c "NBD listener on 127.0.0.1:$P cannot accept new clients" "$tmp/altpathd.log")
n_ctl=$(grep -c "control socket .* cannot accept new clients" "$tmp/altpathd.log")
echo "warnings: NBD listener $n_nbd, control socket $n_ctl; CPU ticks in 2.5 s: $((ticks1 - ticks0))"
[ "$n_nbd" = 1 ] || fail "the NBD listener said $n_nbd times that it cannot accept (want 1)"
[ "$n_ctl" -le 1 ] || fail "the control socket said $n_ctl times that it cannot accept (want at most 1)"
grep -q "open-file limit" "$tmp/altpathd.log" || fail "no hint about the open-file limit"
# A spinning accept loop would take most of a CPU: 250 ticks in 2.5 s.
[ $((ticks1 - ticks0)) -lt 60 ] || fail "altpathd used $((ticks1 - ticks0)) ticks in 2.5 s: spinning"

wait "$FLOOD"
sleep 0.5
[ "$(nbdinfo --size "nbd://127.0.0.1:$P/ALPHA%24DKA100")" = 67108864 ] \
  || fail "nbdinfo after the flood"
"$BUILD/altpath" --socket "$tmp/control.sock" ping > /dev/null \
  || fail "the control socket after the flood"
grep -q "NBD listener on 127.0.0.1:$P accepts new clients again" "$tmp/altpathd.log" \
  || fail "no word that the NBD listener recovered"
alive || fail "altpathd died"
stop_daemon
echo "PASS"
