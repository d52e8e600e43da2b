#!/usr/bin/env bash
# registry-etcd-secure.sh — the etcd registry over TLS with client
# certificates and etcd's own authentication (users and roles), as a real
# cluster should run it (docs/registry.md, "Security").
#
# One etcd member on loopback (ports picked free), https only, requiring
# client certificates signed by a test CA (openssl, made here), with
# authentication on: user alpha may read and write /altpath/, user bob
# nothing.  Then:
#   - a node with ca-file, cert-file, key-file, username and password-file
#     joins: its records are in etcd and `altpath show cluster` says etcd
#     is healthy;
#   - each thing missing or wrong stops the start with exit 1 and a
#     message that says what to set: a wrong password, no user, no client
#     certificate, another CA, a user without permission;
#   - etcd restarts under the running node (its tokens are lost): the node
#     logs in again by itself, its registry is healthy again, and it sees
#     a second node that joins after the restart (the watch works again).
# etcd's gateway refuses a client certificate with a Common Name once
# authentication is on, so the client certificate here has none (as
# docs/registry.md tells operators).
set -uo pipefail

BUILD=${BUILD:-$(pwd)/build}
altpathd=$BUILD/altpathd
altpath=$BUILD/altpath
for t in etcd etcdctl openssl curl; do
  command -v $t >/dev/null || { echo "SKIP: needs $t (etcd-server, etcd-client, openssl, curl)"; exit 77; }
done
[ -x "$altpathd" ] && [ -x "$altpath" ] || { echo "SKIP: altpathd is not built"; exit 77; }

T=$(mktemp -d /dev/shm/ap-etcdsec.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
die() { echo "FAIL: $*"; [ -f "$T/etcd.log" ] && tail -20 "$T/etcd.log"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ------------------------------------------------------------ certificates
cd "$T" || exit 1
ossl() { openssl "$@" >/dev/null 2>&1 || die "openssl $1 failed"; }
ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=altpath test CA"
ossl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=some other CA"
# sign NAME SUBJECT EXTENSIONS
sign() {
  ossl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
  printf '%s\n' "$3" > "$1.ext"
  ossl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out "$1.pem" -days 2 -extfile "$1.ext"
}
sign server "/CN=etcd" $'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth'
sign client "/O=altpath" $'subjectAltName=DNS:alpha\nextendedKeyUsage=clientAuth'
chmod 600 ./*.key

# -------------------------------------------------------------------- etcd
CP=$(free_port); PP=$(free_port)
EP=https://127.0.0.1:$CP
start_etcd() {
  etcd --name sec --data-dir "$T/etcd" \
    --listen-client-urls "$EP" --advertise-client-urls "$EP" \
    --listen-peer-urls "http://127.0.0.1:$PP" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "sec=http://127.0.0.1:$PP" \
    --cert-file server.pem --key-file server.key \
    --trusted-ca-file ca.pem --client-cert-auth >>"$T/etcd.log" 2>&1 &
  etcd_pid=$!
  pids+=($etcd_pid)
  for _ in $(seq 100); do
    curl -s -m 1 --cacert ca.pem --cert client.pem --key client.key \
      -X POST "$EP/v3/maintenance/status" -d '{}' | grep -q '"version"' && return 0
    sleep 0.1
  done
  die "etcd did not start on $EP"
}
start_etcd
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$EP" --cacert ca.pem --cert client.pem --key client.key "$@"; }
{
  ctl user add root:rootpw && ctl user grant-role root root \
    && ctl role add altpath \
    && ctl role grant-permission altpath --prefix=true readwrite /altpath/ \
    && ctl user add alpha:alphapw && ctl user grant-role alpha altpath \
    && ctl user add bob:bobpw && ctl auth enable
} >"$T/setup.log" 2>&1 || die "setting up etcd's users: $(cat "$T/setup.log")"
pass "etcd on $EP: TLS, client certificates required, authentication on"
printf 'alphapw\n' > alpha.pw
printf 'wrong\n' > wrong.pw
printf 'bobpw\n' > bob.pw
chmod 600 ./*.pw

# ------------------------------------------------------------------- nodes
mkdir -p bus
truncate -s 16M bus/disk100.img
# conf NAME [KEY=VALUE...]: a node; the pairs replace [registry] keys
# ("key=" drops one)
conf() {
  local name=$1; shift
  declare -A k=([endpoints]=$EP [ca-file]=ca.pem [cert-file]=client.pem
                [key-file]=client.key [username]=alpha [password-file]=alpha.pw)
  for kv in "$@"; do k[${kv%%=*}]=${kv#*=}; done
  {
    printf '[node]\nname = %s\n[listen]\naddress = 127.0.0.1:%s\n' "$name" "$(free_port)"
    printf '[port B]\nalloclass = 4\nglob = %s/bus/disk*.img\n' "$T"
    printf '[registry]\nbackend = etcd\nlease-ms = 3000\n'
    for key in endpoints ca-file cert-file key-file username password-file; do
      [ -n "${k[$key]}" ] && printf '%s = %s\n' "$key" "${k[$key]}"
    done
    printf '[cluster]\nlocal-socket = %s/%s.sock\nstate-file = %s/%s.json\ndevices = none\n' "$T" "$name" "$T" "$name"
    printf '[control]\nsocket = %s/%s.ctl\n' "$T" "$name"
  } > "$T/$name.conf"
}
# refused NAME FRAGMENT [KEY=VALUE...]: the node does not start: exit 1,
# and its error names the problem
refused() {
  local what=$1 frag=$2; shift 2
  conf BAD "$@"
  out=$(timeout 30 "$altpathd" --config "$T/BAD.conf" 2>&1); r=$?
  if [ $r -eq 1 ] && grep -q "altpathd: error: cannot join the cluster: registry etcd" <<<"$out" \
     && grep -qF -- "$frag" <<<"$out"; then
    pass "$what: exit 1: $(grep -m1 'altpathd: error' <<<"$out" | cut -c1-220)..."
  else
    fail "$what: exit $r: $out"
  fi
}
# healthy NAME SECONDS: its registry is healthy
healthy() {
  for _ in $(seq $(($2 * 10))); do
    "$altpath" --socket "$T/$1.ctl" --timeout 2 show cluster 2>/dev/null \
      | grep -q "registry etcd: healthy" && return 0
    sleep 0.1
  done
  return 1
}

conf ALPHA
"$altpathd" -v --config "$T/ALPHA.conf" 2>"$T/ALPHA.log" &
alpha=$!
pids+=($alpha)
if healthy ALPHA 15 && ctl --user alpha:alphapw get --prefix /altpath/nodes/ --keys-only 2>/dev/null \
     | grep -qx /altpath/nodes/ALPHA; then
  pass "ALPHA joins over TLS with its client certificate and user alpha; its records are in etcd"
else
  fail "ALPHA did not join: $(tail -5 "$T/ALPHA.log")"
fi
if ctl get --prefix /altpath/ --keys-only >/dev/null 2>&1; then
  fail "etcd let an unauthenticated client read the registry: the test's etcd is not secured"
fi

refused "wrong password" "refused the login of user 'alpha'" password-file=wrong.pw
refused "no user" "requires authentication; set 'username' and 'password-file'" username= password-file=
refused "no client certificate" "set cert-file and key-file" cert-file= key-file=
refused "another CA" "check [registry] ca-file" ca-file=other-ca.pem
refused "a user without permission" "permission denied to user 'bob'" username=bob password-file=bob.pw

# --------------------------------------------- etcd restarts: tokens lost
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null
start_etcd
if healthy ALPHA 20; then
  pass "etcd restarted (every token lost): ALPHA logged in again, registry healthy"
else
  fail "ALPHA's registry is not healthy after etcd's restart: $(tail -5 "$T/ALPHA.log")"
fi
conf BETA
"$altpathd" --config "$T/BETA.conf" 2>"$T/BETA.log" &
pids+=($!)
ok=
for _ in $(seq 150); do
  "$altpath" --socket "$T/ALPHA.ctl" --timeout 2 show cluster 2>/dev/null | grep -q "^  BETA " && { ok=1; break; }
  sleep 0.1
done
[ -n "$ok" ] && pass "ALPHA sees BETA, which joined after the restart (the watch logged in again)" \
  || fail "ALPHA does not see BETA: $("$altpath" --socket "$T/ALPHA.ctl" show cluster 2>&1 | head -8)"

kill -TERM "$alpha"; wait "$alpha"; r=$?
[ $r -eq 0 ] && pass "ALPHA stops cleanly (exit 0)" || fail "ALPHA exited $r on SIGTERM"
if [ $failures -gt 0 ]; then
  echo "----- ALPHA's log (last 20 lines) -----"; tail -20 "$T/ALPHA.log"
  echo "$failures check(s) failed"; exit 1
fi
echo "all checks passed"
