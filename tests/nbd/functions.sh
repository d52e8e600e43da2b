# tests/nbd/functions.sh — sourced by tests/nbd-*.sh: start altpathd on a
# configuration written into a temporary directory, stop it by its PID,
# skip (exit 77) when a tool is missing.
#
#   requires TOOL...            skip unless every TOOL is on PATH
#   requires_pynbd              skip unless Debian's python3-libnbd is there
#   write_conf FILE LISTEN...   a config serving $tmp/disk.img as A100 and
#                               $tmp/ro.img as A101 (read-only); LISTEN is
#                               a [listen] body line, e.g.
#                               "address = unix:$tmp/nbd.sock"
#   start_daemon CONF           start it, wait for "ready"; sets DPID
#   stop_daemon                 SIGTERM, wait (bounded), check exit 0
#   fd_count                    open descriptors of the daemon
#   free_port                   a free loopback TCP port
#   fail MSG                    print and exit 1
#
# Everything lives in $tmp, removed at exit; the daemon is stopped by PID
# at exit whatever happens.

set -uo pipefail

: "${BUILD:?BUILD must be the build directory (tests/run.sh sets it)}"
SRCDIR=${SRCDIR:-$(pwd)}
PY=/usr/bin/python3             # Debian's python3, which has the nbd module
export LC_ALL=C

DISK=ALPHA\$DKA100              # the export names write_conf produces
RODISK=ALPHA\$DKA101

fail () {
  echo "FAIL: $*" >&2
  if [ -n "${tmp:-}" ] && [ -f "$tmp/altpathd.log" ]; then
    echo "---- altpathd log (last 40 lines) ----" >&2
    tail -n 40 "$tmp/altpathd.log" >&2
  fi
  exit 1
}

requires () {
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || { echo "SKIP: $c is not installed"; exit 77; }
  done
}

requires_pynbd () {
  $PY -c 'import nbd' 2>/dev/null \
    || { echo "SKIP: python3-libnbd is not installed"; exit 77; }
}

[ -x "$BUILD/altpathd" ] || { echo "SKIP: $BUILD/altpathd is not built"; exit 77; }

tmp=$(mktemp -d /tmp/altpath-nbd.XXXXXX)
DPID=

cleanup () {
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
    kill -TERM "$DPID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DPID" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# write_conf FILE [EXTRA-SECTIONS...] — listeners come from $LISTEN (one
# or more "[listen]" bodies separated by "|"), TLS from $TLSCONF.
write_conf () {
  local f=$1
  [ -f "$tmp/disk.img" ] || truncate -s "${DISK_SIZE:-64M}" "$tmp/disk.img"
  [ -f "$tmp/ro.img" ] || truncate -s 8M "$tmp/ro.img"
  {
    echo "[node]"
    echo "name = ALPHA"
    local IFS='|'
    for l in ${LISTEN:-address = unix:$tmp/nbd.sock}; do
      echo "[listen]"
      printf '%s\n' "$l" | tr ';' '\n'
    done
    if [ -n "${TLSCONF:-}" ]; then
      echo "[tls]"
      printf '%s\n' "$TLSCONF" | tr ';' '\n'
    fi
    echo "[port A]"
    echo "100 = $tmp/disk.img${DISK_OPTS:-}"
    echo "101 = $tmp/ro.img, read-only"
    if [ -n "${EXTRA_CONF:-}" ]; then
      printf '%s\n' "$EXTRA_CONF" | tr ';' '\n'
    fi
  } > "$f"
}

start_daemon () {
  "$BUILD/altpathd" --config "$1" > "$tmp/altpathd.log" 2>&1 &
  DPID=$!
  for _ in $(seq 1 100); do
    grep -q "ready" "$tmp/altpathd.log" 2>/dev/null && return 0
    kill -0 "$DPID" 2>/dev/null || { DPID=; fail "altpathd exited at start"; }
    sleep 0.1
  done
  fail "altpathd did not get ready in 10 s"
}

# stop_daemon [MAX-SECONDS]: SIGTERM; it must exit 0 in time.
stop_daemon () {
  local max=${1:-30} rc
  [ -n "$DPID" ] || return 0
  kill -TERM "$DPID" 2>/dev/null || fail "altpathd (pid $DPID) is not running"
  for _ in $(seq 1 $((max * 10))); do
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$DPID" 2>/dev/null; then
    kill -KILL "$DPID"
    fail "altpathd did not stop within $max s of SIGTERM"
  fi
  wait "$DPID"; rc=$?
  DPID=
  [ "$rc" -eq 0 ] || fail "altpathd exited with status $rc"
}

alive () {
  [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null
}

fd_count () {
  ls "/proc/$DPID/fd" | wc -l
}

# The daemon's descriptor count once it settles (connections close
# asynchronously after the client has gone).
fd_count_settled () {
  local want=$1 n
  for _ in $(seq 1 50); do
    n=$(fd_count)
    [ "$n" -le "$want" ] && { echo "$n"; return; }
    sleep 0.1
  done
  echo "$n"
}

free_port () {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

unix_uri () {                   # unix_uri EXPORT [SOCKET]
  echo "nbd+unix:///$1?socket=${2:-$tmp/nbd.sock}"
}
