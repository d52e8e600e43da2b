#!/usr/bin/env bash
# daemon-signals.sh — altpathd's life cycle: it serves its disks on a Unix
# socket and a loopback TCP port; SIGHUP reloads the disk list (a disk
# added to the glob's directory appears, a removed one goes, a broken
# configuration keeps the old list); SIGTERM stops it with exit 0 within a
# few seconds, also with a client connected, and leaves no process.
#
# Needs nbdinfo and nbdcopy (libnbd-bin).
set -uo pipefail

BUILD=${BUILD:-$(pwd)/build}
altpathd=$BUILD/altpathd
if [ ! -x "$altpathd" ]; then
  echo "SKIP: $altpathd is not built"
  exit 77
fi
for tool in nbdinfo nbdcopy; do
  if ! command -v $tool >/dev/null; then
    echo "SKIP: $tool (libnbd-bin) is missing"
    exit 77
  fi
done

tmp=$(mktemp -d /tmp/altpath-daemon-signals.XXXXXX)
pid=
client=
cleanup() {
  for p in $client $pid; do
    if kill -0 "$p" 2>/dev/null; then
      kill -KILL "$p" 2>/dev/null
      wait "$p" 2>/dev/null
    fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
die() {
  echo "FAIL: $*"
  echo "----- altpathd's log -----"
  cat "$tmp/log" 2>/dev/null
  exit 1
}

mkdir "$tmp/shared"
truncate -s 16M "$tmp/shared/disk100.img" "$tmp/shared/disk101.img"
sock=$tmp/nbd.sock

write_config() {
  cat >"$tmp/altpath.conf" <<EOF
[node]
name = alpha

[listen]
address = unix:$sock

[listen]
address = 127.0.0.1:$port

[port B]
alloclass = 4
glob = shared/disk*.img
EOF
}

# The exports a listing shows, sorted, on one line.
exports() {
  nbdinfo --list "$1" 2>/dev/null | sed -n 's/^export="\(.*\)":$/\1/p' \
    | sort | tr '\n' ' '
}
unix_uri="nbd+unix:///?socket=$sock"

# Wait until the exports over the Unix socket are $1 (10 s at most).
wait_exports() {
  local want=$1 got
  for _ in $(seq 100); do
    got=$(exports "$unix_uri")
    [ "$got" = "$want" ] && return 0
    sleep 0.1
  done
  echo "exports are '$got', not '$want'"
  return 1
}

# --- start (on a free port: retry if it was taken) ------------------------
started=
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  write_config
  "$altpathd" --config "$tmp/altpath.conf" 2>"$tmp/log" &
  pid=$!
  for _ in $(seq 100); do
    grep -q "info: ready" "$tmp/log" && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  if grep -q "info: ready" "$tmp/log"; then started=1; break; fi
  wait $pid 2>/dev/null
  pid=
  grep -qi "address already in use" "$tmp/log" || break
done
[ -n "$started" ] || die "altpathd did not start"
pass "started: unix:$sock and 127.0.0.1:$port"

# --- it serves -------------------------------------------------------------
if wait_exports "\$4\$DKB100 \$4\$DKB101 "; then
  pass "unix socket lists \$4\$DKB100 and \$4\$DKB101"
else
  fail "unix socket listing"
fi
got=$(exports "nbd://127.0.0.1:$port/")
if [ "$got" = "\$4\$DKB100 \$4\$DKB101 " ]; then
  pass "TCP port lists the same"
else
  fail "TCP listing is '$got'"
fi
# '$' is %24 in a URI.
size=$(nbdinfo --size "nbd://127.0.0.1:$port/%244%24DKB100" 2>&1)
if [ "$size" = 16777216 ]; then
  pass "\$4\$DKB100 has the image's size over TCP"
else
  fail "size of \$4\$DKB100: $size"
fi
# Data written through the export is in the image file (O_DIRECT: no cache
# of the daemon's between them).
head -c 1048576 /dev/urandom >"$tmp/data"
if nbdcopy "$tmp/data" "nbd+unix:///%244%24DKB101?socket=$sock" 2>"$tmp/copy.err" \
   && cmp -s "$tmp/data" <(head -c 1048576 "$tmp/shared/disk101.img"); then
  pass "a write through \$4\$DKB101 reaches the image file"
else
  fail "write through \$4\$DKB101: $(cat "$tmp/copy.err")"
fi

# --- SIGHUP: a disk added, a disk removed, a broken file -------------------
truncate -s 16M "$tmp/shared/disk102.img"
kill -HUP $pid
if wait_exports "\$4\$DKB100 \$4\$DKB101 \$4\$DKB102 "; then
  pass "SIGHUP after adding disk102.img: \$4\$DKB102 appears"
else
  fail "SIGHUP after adding a disk"
fi

rm "$tmp/shared/disk100.img"
kill -HUP $pid
if wait_exports "\$4\$DKB101 \$4\$DKB102 "; then
  pass "SIGHUP after removing disk100.img: \$4\$DKB100 is gone"
else
  fail "SIGHUP after removing a disk"
fi

cp "$tmp/altpath.conf" "$tmp/good.conf"
printf '[port C]\nalloclass = banana\n' >>"$tmp/altpath.conf"
truncate -s 16M "$tmp/shared/disk103.img"
kill -HUP $pid
for _ in $(seq 100); do
  grep -q "keeping the current disk list" "$tmp/log" && break
  sleep 0.1
done
if grep -q "error: .*altpath.conf line 14, key 'alloclass'.*keeping the current disk list" \
     "$tmp/log" && kill -0 $pid 2>/dev/null \
   && [ "$(exports "$unix_uri")" = "\$4\$DKB101 \$4\$DKB102 " ]; then
  pass "SIGHUP with a broken file: error logged, old list kept, still running"
else
  fail "SIGHUP with a broken file: $(grep -i "error" "$tmp/log" | tail -n 2)"
fi
mv "$tmp/good.conf" "$tmp/altpath.conf"
rm "$tmp/shared/disk103.img"

# --- SIGTERM with a client connected ---------------------------------------
# A client holds a connection open (nbdinfo's --list connects and leaves;
# this one waits on a fifo).
mkfifo "$tmp/hold"
(
  PATH=/usr/bin:$PATH nbdsh -u "nbd+unix:///%244%24DKB101?socket=$sock" \
    -c 'h.pread(4096, 0)' -c 'open("'"$tmp/hold"'").read()' \
    >/dev/null 2>&1
) &
client=$!
connected=
command -v ss >/dev/null || { sleep 1; connected=1; }   # cannot look: trust
for _ in $(seq 50); do
  [ -n "$connected" ] && break
  if ss -x 2>/dev/null | grep -q "$sock"; then connected=1; break; fi
  sleep 0.1
done
sleep 0.3
if [ -n "$connected" ] && kill -0 $client 2>/dev/null; then
  pass "a client is connected (nbdsh on \$4\$DKB101)"
else
  fail "the nbdsh client did not stay connected"
fi
start=$(date +%s.%N)
kill -TERM $pid
exited=
for _ in $(seq 150); do
  if ! kill -0 $pid 2>/dev/null; then exited=1; break; fi
  sleep 0.1
done
if [ -z "$exited" ]; then
  echo x >"$tmp/hold" &
  die "altpathd still runs 15 s after SIGTERM"
fi
wait $pid; rc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
pid=
if [ $rc -eq 0 ]; then
  pass "SIGTERM: exit 0 after ${secs}s with a client connected"
else
  fail "SIGTERM: exit $rc"
fi
grep -q "info: stopped" "$tmp/log" || fail "no 'stopped' in the log"
echo x >"$tmp/hold" 2>/dev/null &
wait $client 2>/dev/null
client=

# --- SIGINT, no client: quick ----------------------------------------------
"$altpathd" --config "$tmp/altpath.conf" 2>"$tmp/log2" &
pid=$!
for _ in $(seq 100); do
  grep -q "info: ready" "$tmp/log2" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
grep -q "info: ready" "$tmp/log2" || die "no restart: $(cat "$tmp/log2")"
kill -INT $pid
for _ in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then
  fail "SIGINT: still running after 5 s"
else
  wait $pid; rc=$?
  if [ $rc -eq 0 ]; then pass "SIGINT: exit 0"; else fail "SIGINT: exit $rc"; fi
fi
pid=
if [ -e "$sock" ] && nbdinfo --list "$unix_uri" >/dev/null 2>&1; then
  fail "something still answers on $sock"
fi
if pgrep -f "altpathd --config $tmp/" >/dev/null; then
  fail "an altpathd of this test is still running"
else
  pass "no altpathd left running"
fi

if [ $failures -gt 0 ]; then
  echo "----- altpathd's log -----"
  cat "$tmp/log"
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
