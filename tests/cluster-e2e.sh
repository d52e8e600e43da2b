#!/usr/bin/env bash
# cluster-e2e.sh — three altpathd nodes on this host, the system of the
# seed notes end to end.
#
#   A (root netns) ─┐ shared port B, alloclass 4: a directory of images
#   B (netns, veth) ┘ (the "shared bus"); each reaches $4$DKB1xx directly
#   C (root netns)    attached to nothing: reaches every disk served
#
# The integrity verifier runs through a unit on every node (A checks
# $4$DKB100 through A's local socket, B $4$DKB101, C $4$DKB102) while the
# test kills A with SIGKILL and restarts it, cuts B's link and restores
# it, fails A's direct path (fault-dir trigger) and restores it, and
# hot-adds a disk.  At the end: every verifier clean, every unit back on
# its preferred path (A and B direct, C served), the hot-added disk seen
# everywhere; then the hot-added disk, removed from its port, gone from
# every node; nothing left running.
#
# BACKEND=dir (default) or etcd (then an etcd member runs on the veth's
# root side, so that cutting B's link also cuts B off the registry).
set -uo pipefail

BACKEND=${BACKEND:-dir}
BUILD=${BUILD:-build}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 77; }
command -v ip > /dev/null || { echo "needs iproute2"; exit 77; }
command -v nbdinfo > /dev/null || { echo "needs nbdinfo (libnbd-bin)"; exit 77; }
if [ "$BACKEND" = etcd ] && ! command -v etcd > /dev/null; then
  echo "needs etcd (etcd-server)"; exit 77
fi
for b in altpathd altpath ap-verify; do
  [ -x "$BUILD/$b" ] || { echo "missing $BUILD/$b: run make"; exit 1; }
done

T=$(mktemp -d /dev/shm/ap-e2e.XXXXXX)
. "$(dirname "$0")/lib/cluster.sh"
NS=ape2e$$
VR=ap$$r
VB=ap$$b
NET=10.$((200 + $$ % 50)).$(($$ % 250)).
IPA=${NET}1
IPB=${NET}2
pids=()
declare -A node_pid

log () { printf '[%6.1f] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $START}")" "$*"; }
START=$(date +%s.%N)

cleanup () {
  set +e
  for p in "${pids[@]}" "${node_pid[@]}"; do kill -9 "$p" 2> /dev/null; done
  wait 2> /dev/null
  ip netns del "$NS" 2> /dev/null
  ip link del "$VR" 2> /dev/null
  rm -rf "$T"
}
trap cleanup EXIT

fail () { log "FAIL: $*"; for n in A B C; do echo "---- log of $n"; tail -n 40 "$T/$n.log"; done; exit 1; }

# ---------------------------------------------------------------- network
cluster_net || exit 77

# ------------------------------------------------------------- registry
mkdir -p "$T/bus" "$T/reg" "$T/faults-A" "$T/faults-B" "$T/faults-C"
if [ "$BACKEND" = etcd ]; then
  EP=2379; PP=2380
  etcd --name e2e --data-dir "$T/etcd" \
    --listen-client-urls "http://$IPA:$EP" --advertise-client-urls "http://$IPA:$EP" \
    --listen-peer-urls "http://$IPA:$PP" --initial-advertise-peer-urls "http://$IPA:$PP" \
    --initial-cluster "e2e=http://$IPA:$PP" > "$T/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    curl -s -m 1 -X POST "http://$IPA:$EP/v3/kv/range" -d '{"key":"AA=="}' > /dev/null && break
    sleep 0.2
  done
  REG="backend = etcd
endpoints = http://$IPA:$EP
lease-ms = 2000"
else
  REG="backend = dir
dir = $T/reg
lease-ms = 1500"
fi

# ------------------------------------------------------------- disks
for u in 100 101 102; do truncate -s 64M "$T/bus/disk$u.img"; done

cluster_conf A "$IPA:10901" "$REG" "" yes
cluster_conf B "$IPB:10902" "$REG" "" yes
cluster_conf C "$IPA:10903" "$REG" 127.0.0.1:10913 no

# units_of NODE: the device names on the node's local socket
units_of () { nbdinfo --list --json "nbd+unix:///?socket=$T/$1.sock" 2> /dev/null \
  | /usr/bin/python3 -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(sys.stdin)["exports"])))' 2> /dev/null; }

# wait_units NODE "LIST" SECONDS
wait_units () {
  local want=$2 got=
  for _ in $(seq $(($3 * 10))); do
    got=$(units_of "$1")
    [ "$got" = "$want" ] && return 0
    sleep 0.1
  done
  fail "node $1 has units '$got', want '$want' within $3 s"
}

# active NODE DEVICE: the active path of a unit, from the control socket
active () {
  "$BUILD/altpath" --socket "$T/$1.ctl" --timeout 5 --json show device "$2" 2> /dev/null \
    | /usr/bin/python3 -c 'import json,sys
d = json.load(sys.stdin); d = d.get("device", d)
print(next((p["name"] for p in d["paths"] if p["active"]), "none"))' 2> /dev/null
}

# wait_active NODE DEVICE PATTERN SECONDS
wait_active () {
  local got=
  for _ in $(seq $(($4 * 10))); do
    got=$(active "$1" "$2")
    [[ $got == $3 ]] && return 0
    sleep 0.1
  done
  fail "unit $2 on node $1 is on path '$got', want '$3' within $4 s"
}

log "starting nodes A, B (in netns $NS) and C; registry: $BACKEND"
cluster_start A; cluster_start B; cluster_start C
ALL3='$4$DKB100 $4$DKB101 $4$DKB102'
for n in A B C; do wait_units "$n" "$ALL3" 15; done
for d in '$4$DKB100' '$4$DKB101' '$4$DKB102'; do
  wait_active A "$d" direct 10
  wait_active B "$d" direct 10
  wait_active C "$d" 'served:*' 10
done
log "every node has its three units: A and B direct, C served"
# Invariant 5: C reaches every disk only served, so it must never serve
# one: no unit anywhere may have a path through C, and C publishes none.
for n in A B C; do
  for d in '$4$DKB100' '$4$DKB101' '$4$DKB102'; do
    reply=$("$BUILD/altpath" --socket "$T/$n.ctl" --json show device "$d" 2>&1)
    grep -q '"ok":true' <<< "$reply" || fail "show device $d on $n: $reply"
    grep -q '"served:C"' <<< "$reply" && fail "unit $d on node $n has a path through C"
  done
done
"$BUILD/altpath" --socket "$T/C.ctl" --json show cluster 2> /dev/null \
  | /usr/bin/python3 -c 'import json,sys
r = json.load(sys.stdin); c = r.get("cluster", r)
sys.exit(not r.get("ok") or "disks" not in c
         or any(d.get("served_by") == "C" for d in c["disks"]))' \
  || fail "node C publishes a disk it reaches only served"
log "nothing is served through C, which reaches every disk only served"
tcp=$(nbdinfo --list --json nbd://127.0.0.1:10913 2> /dev/null | grep -c '"export-name"')
[ "$tcp" = 3 ] || fail "C's units on loopback TCP (local-tcp): $tcp exports, want 3"
log "C also exports its units on loopback TCP (local-tcp)"

# ------------------------------------------------------------ verifiers
enc () { printf '%s' "$1" | sed 's/\$/%24/g'; }
verify () {
  "$BUILD/ap-verify" --uri "nbd+unix:///$(enc "$2")?socket=$T/$1.sock" \
    --seconds 40 --threads 2 --depth 4 --request-timeout 20000 \
    --verify-timeout 60000 --no-trim > "$T/verify-$1.log" 2>&1 &
  pids+=($!)
  eval "vpid_$1=$!"
}
verify A '$4$DKB100'
verify B '$4$DKB101'
verify C '$4$DKB102'
sleep 3

log "kill -9 node A"
kill -9 "${node_pid[A]}"; wait "${node_pid[A]}" 2> /dev/null
wait_active C '$4$DKB100' 'served:B' 15
log "C's units fail over to B"
sleep 1
log "restart node A"
cluster_start A
wait_units A "$ALL3" 15
wait_active A '$4$DKB100' direct 10

log "cut B's link"
ip -n "$NS" link set "$VB" down
wait_active C '$4$DKB101' 'served:A' 15
wait_active C '$4$DKB102' 'served:A' 15
sleep 2
log "restore B's link"
ip -n "$NS" link set "$VB" up

log "fail A's direct path to \$4\$DKB100 (EIO)"
touch "$T/faults-A/4-DKB100.eio"
wait_active A '$4$DKB100' 'served:*' 10
sleep 2
log "repair it"
rm -f "$T/faults-A/4-DKB100.eio"
wait_active A '$4$DKB100' direct 10
log "A failed back to its direct path"

log "hot-add \$4\$DKB103 on the shared port"
truncate -s 64M "$T/bus/disk103.img"
ALL4='$4$DKB100 $4$DKB101 $4$DKB102 $4$DKB103'
for n in A B C; do wait_units "$n" "$ALL4" 5; done
wait_active A '$4$DKB103' direct 5
wait_active B '$4$DKB103' direct 5
wait_active C '$4$DKB103' 'served:*' 5
log "found on every node"

log "waiting for the verifiers"
rc=0
for n in A B C; do
  eval "p=\$vpid_$n"
  if ! wait "$p"; then
    log "verifier on $n FAILED"; tail -n 30 "$T/verify-$n.log"; rc=1
  else
    grep -E '^(requests|errors returned|longest gap|blocks verified)|PASS' \
      "$T/verify-$n.log" | sed "s/^/    $n: /"
  fi
done
[ $rc = 0 ] || fail "a verifier found a violation"

for d in '$4$DKB100' '$4$DKB101' '$4$DKB102' '$4$DKB103'; do
  wait_active A "$d" direct 10
  wait_active B "$d" direct 10
  wait_active C "$d" 'served:*' 10
done
log "every unit is on its preferred path"

# A disk taken off its port leaves the cluster: A and B lose its direct
# path, then each other's served path (the peer is up but no longer
# announces it), C its served paths; no node keeps a unit without paths.
log "remove \$4\$DKB103 from the shared port"
rm -f "$T/bus/disk103.img"
for n in A B C; do wait_units "$n" "$ALL3" 15; done
log "gone from every node"

for n in A B C; do kill -TERM "${node_pid[$n]}"; done
for n in A B C; do
  for _ in $(seq 100); do kill -0 "${node_pid[$n]}" 2> /dev/null || break; sleep 0.1; done
  kill -0 "${node_pid[$n]}" 2> /dev/null && fail "node $n did not stop on SIGTERM"
done
log "PASS ($BACKEND)"
exit 0
