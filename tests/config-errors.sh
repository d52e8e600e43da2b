#!/usr/bin/env bash
# config-errors.sh — altpathd refuses a bad configuration file with a
# message naming the file, the line and the key, and exits 1 without
# starting; a good file passes --check-config; a disk that cannot be opened
# is reported and skipped while the others are served.
#
# Runs build/altpathd (BUILD) --check-config and the real start against
# configurations written to a temporary directory.  The serving part needs
# nbdinfo (libnbd-bin).
set -uo pipefail

BUILD=${BUILD:-$(pwd)/build}
altpathd=$BUILD/altpathd
if [ ! -x "$altpathd" ]; then
  echo "SKIP: $altpathd is not built (daemon/ does not link yet?)"
  exit 77
fi

tmp=$(mktemp -d /tmp/altpath-config-errors.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

truncate -s 4M "$tmp/a0.img" "$tmp/b100.img" "$tmp/b101.img"
echo "alice:0123456789abcdef0123456789abcdef" >"$tmp/keys.psk"
: >"$tmp/ca.pem"                 # only read by the registry, at start
: >"$tmp/empty.pw"

node=$'[node]\nname = alpha'
listen=$'[listen]\naddress = unix:'"$tmp"$'/nbd.sock'

# bad NAME LINE KEY FRAGMENT TEXT
#   The file TEXT must be refused by --check-config and by a real start, with
#   exit 1 and "FILE line LINE, KEY: ...FRAGMENT...".  KEY is "key 'k'" or
#   "section [s]"; LINE "" for a whole-file error.
bad() {
  local name=$1 line=$2 key=$3 frag=$4 text=$5
  local f=$tmp/$name.conf out rc want
  printf '%s\n' "$text" >"$f"
  if [ -n "$line" ] && [ -n "$key" ]; then want="$f line $line, $key: "
  elif [ -n "$line" ]; then want="$f line $line: "
  else want="$f: "; fi
  for mode in check start; do
    if [ $mode = check ]; then
      out=$("$altpathd" --check-config --config "$f" 2>&1 >/dev/null)
      rc=$?
    else
      out=$(timeout 20 "$altpathd" --config "$f" 2>&1)
      rc=$?
    fi
    if [ $rc -ne 1 ]; then
      fail "$name ($mode): exit $rc, not 1; output: $out"
      continue
    fi
    if ! grep -qF -- "altpathd: error: $want" <<<"$out"; then
      fail "$name ($mode): message does not start with '$want': $out"
      continue
    fi
    if ! grep -qF -- "$frag" <<<"$out"; then
      fail "$name ($mode): message lacks '$frag': $out"
      continue
    fi
    if [ $mode = start ] && grep -q "^altpathd: info: \(listening\|serving\|ready\)" <<<"$out"; then
      fail "$name ($mode): started something: $out"
      continue
    fi
  done
  pass "$name: $(head -n 1 <<<"$out" | cut -c1-150)"
}

# --- unknown sections and keys -----------------------------------------
bad unknown-section 5 "section [disks]" "unknown section" \
  "$node"$'\n'"$listen"$'\n[disks]\n100 = /dev/null'
bad unknown-key-node 3 "key 'colour'" "unknown key in [node]" \
  "$node"$'\ncolour = red\n'"$listen"
bad unknown-key-port 6 "key 'speed'" "unknown key in [port B]" \
  "$node"$'\n'"$listen"$'\n[port B]\nspeed = 10'
bad key-outside 1 "key 'name'" "before any section" $'name = alpha\n'"$listen"
bad no-equals 5 "" "" "$node"$'\n'"$listen"$'\nthis is not a key'
# (the line-only form: no key on a line that is not key = value)
bad duplicate-key 3 "key 'name'" "given twice" "$node"$'\nname = beta\n'"$listen"

# --- numbers and ranges --------------------------------------------------
bad alloclass-range 6 "key 'alloclass'" "from 1 to 32767" \
  "$node"$'\n'"$listen"$'\n[port B]\nalloclass = 32768'
bad alloclass-word 6 "key 'alloclass'" "'four' is not" \
  "$node"$'\n'"$listen"$'\n[port B]\nalloclass = four'
bad node-alloclass 3 "key 'alloclass'" "from 1 to 255" \
  "$node"$'\nalloclass = 1000\n'"$listen"
bad unit-range 6 "key '10000'" "from 0 to 9999" \
  "$node"$'\n'"$listen"$'\n[port B]\n10000 = /dev/null'
bad unit-duplicate 7 "key '100'" "given twice" \
  "$node"$'\n'"$listen"$'\n[port B]\n100 = '"$tmp"$'/b100.img\n100 = '"$tmp"/b101.img
bad port-letter 5 "section [port 9]" "one port letter" \
  "$node"$'\n'"$listen"$'\n[port 9]'
bad port-twice 7 "section [port B]" "already described at line 5" \
  "$node"$'\n'"$listen"$'\n[port B]\n[port A]\n[port b]'
bad timeout 6 "key 'verify-timeout-ms'" "milliseconds" \
  "$node"$'\n'"$listen"$'\n[units]\nverify-timeout-ms = soon'
bad same-file 8 "key '101'" "already served as" \
  "$node"$'\n'"$listen"$'\n[port B]\nalloclass = 4\n100 = b100.img\n101 = '"$tmp"/b100.img

# --- names ---------------------------------------------------------------
bad node-name 2 "key 'name'" "not a node name" $'[node]\nname = alpha.example\n'"$listen"
bad no-node "" "" "no [node] section" "$listen"

# --- listeners and TLS ---------------------------------------------------
bad listen-port 4 "key 'address'" "port number from 1 to 65535" \
  "$node"$'\n[listen]\naddress = 127.0.0.1:99999'
bad listen-host 4 "key 'address'" "not an IPv4 address" \
  "$node"$'\n[listen]\naddress = 127.0.0.256:10809'
bad listen-v6 4 "key 'address'" "in brackets" \
  "$node"$'\n[listen]\naddress = ::1:10809'
bad no-listen "" "" "no [listen] section" "$node"
bad tls-require-nocreds 5 "key 'tls'" "neither psk-file nor cert-dir" \
  "$node"$'\n[listen]\naddress = 127.0.0.1:10809\ntls = require'
bad tls-default-nocreds 4 "key 'address'" "TLS is required by default" \
  "$node"$'\n[listen]\naddress = 0.0.0.0:10809'
bad tls-mode 5 "key 'tls'" "not a TLS mode" \
  "$node"$'\n[listen]\naddress = 127.0.0.1:10809\ntls = maybe'
bad psk-missing 6 "key 'psk-file'" "psktool" \
  "$node"$'\n'"$listen"$'\n[tls]\npsk-file = missing.psk'
bad allow-unknown-peer 10 "key '100'" "'mallory' is not in [tls] allow" \
  "$node"$'\n'"$listen"$'\n[tls]\npsk-file = keys.psk\nallow = alice\n[port B]\nalloclass = 4\n100 = b100.img, allow=mallory'
bad disk-option 6 "key '100'" "unknown option 'fast'" \
  "$node"$'\n'"$listen"$'\n[port B]\n100 = b100.img, fast'

# --- [registry] and [cluster] --------------------------------------------
bad registry-backend 6 "key 'backend'" "not a registry backend" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = zookeeper'
bad etcd-no-endpoints 5 "section [registry]" "needs 'endpoints'" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = etcd'
bad local-tcp-remote 7 "key 'local-tcp'" "not a loopback address" \
  "$node"$'\n'"$listen"$'\n[registry]\n[cluster]\nlocal-tcp = 10.1.2.3:10810'
bad cluster-number 7 "key 'deadline-ms'" "from 100 to 600000" \
  "$node"$'\n'"$listen"$'\n[registry]\n[cluster]\ndeadline-ms = 5'
bad cluster-unknown 7 "key 'colour'" "unknown key in [cluster]" \
  "$node"$'\n'"$listen"$'\n[registry]\n[cluster]\ncolour = red'
bad state-file-empty 7 "key 'state-file'" "give a file for the operator's choices" \
  "$node"$'\n'"$listen"$'\n[registry]\n[cluster]\nstate-file ='
bad etcd-tls-http 8 "key 'ca-file'" "include an http:// URL, which does not use TLS" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = etcd\nendpoints = http://127.0.0.1:2379\nca-file = ca.pem'
bad etcd-ca-missing 7 "key 'ca-file'" "cannot read the CA file" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = etcd\nca-file = nothere.pem\nendpoints = https://127.0.0.1:2379'
bad etcd-cert-alone 8 "key 'cert-file'" "needs both 'cert-file' and 'key-file'" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = etcd\nendpoints = https://127.0.0.1:2379\ncert-file = ca.pem'
bad etcd-user-alone 8 "key 'username'" "needs both 'username' and 'password-file'" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = etcd\nendpoints = https://127.0.0.1:2379\nusername = alpha'
bad etcd-password-empty 8 "key 'password-file'" "the etcd user's password on its first line" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = etcd\nendpoints = https://127.0.0.1:2379\npassword-file = empty.pw'
bad dir-with-user 7 "key 'username'" "only the etcd backend takes it" \
  "$node"$'\n'"$listen"$'\n[registry]\nbackend = dir\nusername = alpha\npassword-file = keys.psk'

# --- the command line -----------------------------------------------------
for args in "--bogus" "--config" "" "--config x y"; do
  # shellcheck disable=SC2086
  out=$("$altpathd" $args 2>&1); rc=$?
  if [ $rc -eq 2 ] && grep -q "^usage: altpathd" <<<"$out"; then
    pass "command line '$args': exit 2 with usage"
  else
    fail "command line '$args': exit $rc: $out"
  fi
done

# --- a good file -----------------------------------------------------------
good=$tmp/good.conf
cat >"$good" <<EOF
# Relative paths are relative to this file's directory.
[node]
name = alpha

[listen]
address = unix:nbd.sock

[listen]
address = 127.0.0.1:1        ; never opened by --check-config

[port B]
alloclass = 4
100 = b100.img
101 = b101.img, read-only

[port A]
0 = a0.img
EOF
out=$("$altpathd" --check-config --config "$good" 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q '^  \$4\$DKB100 ' <<<"$out" \
   && grep -q '^  \$4\$DKB101 .* read-only' <<<"$out" \
   && grep -q '^  ALPHA\$DKA0 ' <<<"$out"; then
  pass "good configuration: exit 0, names \$4\$DKB100, \$4\$DKB101, ALPHA\$DKA0"
else
  fail "good configuration: exit $rc: $out"
fi

# --- the example in examples/ is valid (its PSK file made here) --------------
SRCDIR=${SRCDIR:-$(pwd)}
sed "s#/etc/altpath/keys.psk#$tmp/keys.psk#" "$SRCDIR/examples/altpath.conf" \
  >"$tmp/example.conf"
out=$("$altpathd" --check-config --config "$tmp/example.conf" 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q '^  \$4\$DKB202 .* read-only allow=beta,gamma' <<<"$out" \
   && grep -q '^  ALPHA\$DKA1 .*scratch,1.img read-write' <<<"$out"; then
  pass "examples/altpath.conf is valid"
else
  fail "examples/altpath.conf: exit $rc: $out"
fi

# --- one disk cannot be opened: reported, skipped, the others served -------
if ! command -v nbdinfo >/dev/null; then
  echo "SKIP: nbdinfo (libnbd-bin) is missing for the serving part"
  [ $failures -eq 0 ] && exit 77
  exit 1
fi
sock=$tmp/serve.sock
cat >"$tmp/serve.conf" <<EOF
[node]
name = alpha
[listen]
address = unix:$sock
[port B]
alloclass = 4
100 = b100.img
102 = /nonexistent/disk102.img
101 = b101.img, read-only
EOF
"$altpathd" --config "$tmp/serve.conf" 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 100); do
  grep -q "ready" "$tmp/serve.log" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "ready" "$tmp/serve.log"; then
  fail "the daemon did not start: $(cat "$tmp/serve.log")"
else
  if grep -q 'error: \$4\$DKB102: cannot serve /nonexistent/disk102.img.*serve.conf line 8.*skipped' \
       "$tmp/serve.log"; then
    pass "the unopenable disk is reported with its name, file and line"
  else
    fail "no clear error for the unopenable disk: $(cat "$tmp/serve.log")"
  fi
  list=$(nbdinfo --list "nbd+unix:///?socket=$sock" 2>&1 \
         | sed -n 's/^export="\(.*\)":$/\1/p' | sort | tr '\n' ' ')
  if [ "$list" = "\$4\$DKB100 \$4\$DKB101 " ]; then
    pass "the other disks are served: $list"
  else
    fail "exports are '$list', not '\$4\$DKB100 \$4\$DKB101'"
  fi
  kill -TERM $pid
  wait $pid; rc=$?
  pid=
  if [ $rc -eq 0 ]; then pass "SIGTERM: exit 0"; else fail "SIGTERM: exit $rc"; fi
fi

if [ $failures -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
