#!/usr/bin/env bash
# soak/run.sh — `make soak`: the three-node cluster of the demo under a
# seeded random fault schedule, with the integrity verifier running on
# every node through the node's units.
#
#   A (root netns) ─┐ shared port B, alloclass 4: loop devices (the
#   B (netns, veth) ┘ "shared bus"); each reaches $4$DKB1xx directly
#   C (root netns)    attached to nothing: reaches every disk served
#   registry: a three-member etcd cluster on the veth's root side, so
#   cutting B's link also cuts B off the registry
#
# One ap-verify per node for the whole run: A checks $4$DKB100, B
# $4$DKB101, C $4$DKB102, each through its own node's unit on the node's
# loopback TCP export (`local-tcp`; B's is inside B's namespace).
# Meanwhile a schedule drawn from SEED injects, one at a time:
#   eio / hang / slow   on the direct path of A or B to a disk
#                       (fault-dir trigger files, docs/cluster.md)
#   kill                SIGKILL of A or B, restarted after a while
#   stop                SIGSTOP of A or B, SIGCONT after a while
#   restart             SIGTERM of A or B, wait for it to exit, start again
#   linkcut             B's veth down, up after a while
#   etcd                SIGKILL of one etcd member, restarted after a while
#   disk                hot-add of a disk to the shared bus, or removal of
#                       the hot-added one (never a disk a verifier uses)
# After each fault is restored the script waits until the cluster has
# settled again (soak/monitor.py: every node answers, registry healthy,
# every unit back on its preferred path, C with both servers usable)
# before it draws the next one: so there is never more than one fault at
# a time and every node always keeps a path to every disk.
#
# Why the verifiers survive their own node being killed: a node-level
# fault only ever hits A or B (the serving nodes; C serves nothing).  The
# verifier of C rides through it on C's units — that is the failover the
# soak is about (served:A <-> served:B, with the deadline fence of
# invariant 3 between them).  The verifiers of A and B lose their own
# daemon; they run with a 20 s request timeout and a 60 s verification
# timeout, so their own single served path reconnects when the node is
# back and resubmits what was in doubt.  They use TCP rather than the
# Unix socket because only TCP carries the request deadline
# (docs/served.md "Unix sockets"): over it a write in doubt when the node
# died is fenced after 2.2 s instead of 10 s.  A SIGSTOP is kept below
# the verifiers' request timeout, so their requests just wait.
#
# Why loop devices and not image files: with images on tmpfs, io_uring
# hands O_DIRECT writes to altpathd's own io-wq threads, which a SIGSTOP
# freezes with the daemon, so a write started in time lands after the
# SIGCONT (docs/served.md "Limits").  On a loop device the kernel does the
# I/O, as on a real disk.
#
# "Two paths in flight" is counted twice: by each verifier's trace witness
# (its own unit; one path) and by monitor.py sampling the per-path
# in-flight counts of every device of every node every 0.2 s.
#
# Environment:
#   BUILD     directory holding altpathd, altpath, ap-verify (default build)
#   DURATION  run time: 120, 120s, 2m, 1h (default 10m); at least 60 s
#   SEED      seed of the schedule (default: drawn and printed); the
#             schedule — which fault, on what, for how long, the pause
#             before it — is a function of SEED and DURATION only
#   SOAK_KEEP=1  keep the work directory (logs) after the run
# Exit status: 0 no loss, duplicate, stale write, overlap, verifier error
# or unhealthy daemon; 1 any of those (the seed and the log tails are
# printed); 2 usage error; 77 not root, a needed tool is missing (named),
# or no network namespace / veth / loop device can be made.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${BUILD:-build}
DURATION=${DURATION:-10m}
SEED=${SEED:-}

# ------------------------------------------------------------- arguments
case $DURATION in
  *[0-9]h) RUN=$(( ${DURATION%h} * 3600 )) ;;
  *[0-9]m) RUN=$(( ${DURATION%m} * 60 )) ;;
  *[0-9]s) RUN=${DURATION%s} ;;
  *) RUN=$DURATION ;;
esac
if ! [[ $RUN =~ ^[0-9]+$ ]] || [ "$RUN" -lt 60 ]; then
  echo "soak: DURATION='$DURATION' is not a duration of at least 60 s" \
       "(write e.g. 120, 120s, 2m or 1h)" >&2
  exit 2
fi
RUN=$((10#$RUN))
if [ -n "$SEED" ] && ! [[ $SEED =~ ^[0-9]{1,9}$ ]]; then
  echo "soak: SEED='$SEED' is not a number of 1 to 9 digits" >&2
  exit 2
fi

# ------------------------------------------------------------- tools
[ "$(id -u)" = 0 ] || { echo "soak: needs root (network namespace, loop devices, etcd on a veth)"; exit 77; }
declare -A PKG=([ip]=iproute2 [etcd]=etcd-server [losetup]=mount [curl]=curl [od]=coreutils)
for t in ip etcd losetup curl od; do
  command -v "$t" > /dev/null || { echo "soak: needs $t (Debian package ${PKG[$t]})"; exit 77; }
done
[ -x /usr/bin/python3 ] || { echo "soak: needs /usr/bin/python3"; exit 77; }
for b in altpathd altpath ap-verify; do
  [ -x "$BUILD/$b" ] || { echo "soak: missing $BUILD/$b: run make"; exit 1; }
done
BUILD=$(cd "$BUILD" && pwd)
[ -n "$SEED" ] || SEED=$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000 ))
SEED=$((10#$SEED))

# ------------------------------------------------------------- schedule
# A function of SEED and RUN only: our own generator (a 31-bit LCG, the
# high bits), not bash's $RANDOM, which bash reseeds in every subshell
# and whose algorithm differs between bash versions.
TAIL=15
WINDOW=$((RUN - TAIL))
RNG=$SEED
rnd () {   # rnd LO HI: R = uniform in [LO, HI]
  RNG=$(( (RNG * 1103515245 + 12345) % 2147483648 ))
  R=$(( $1 + (RNG >> 12) % ($2 - $1 + 1) ))
}
KINDS=(eio eio hang hang slow slow kill kill stop stop restart linkcut etcd disk disk)
SCHED=()        # "kind target param ms pause_ms"
planned=0
while [ $planned -lt $((WINDOW * 2000)) ]; do
  rnd 0 $((${#KINDS[@]} - 1)); k=${KINDS[$R]}
  rnd 0 1; node=$( ((R)) && echo B || echo A)
  # Half of the node-level faults go to whichever node carries C's
  # verifier I/O at that moment ("@", resolved when injected): the
  # failover C's verifier must ride through.
  rnd 0 1; anynode=$node; ((R)) && anynode=@
  # Two thirds of the path faults hit the disk of the node's verifier.
  rnd 0 2; own=$R; rnd 100 102; disk=$R
  ((own)) && { [ "$node" = A ] && disk=100 || disk=101; }
  rnd 1000 4000; gap=$R
  rnd 0 100000; x=$R   # the kind's own draws, from one number
  case $k in
    eio|hang) e="$k $node $disk $((500 + x % 3501))" ;;
    slow)     e="$k $node $disk:$((10 + x % 191))000 $((1000 + x / 191 % 4001))" ;;
    kill)     e="kill $anynode - $((500 + x % 3501))" ;;
    stop)     e="stop $anynode - $((100 + x % 1901))" ;;
    restart)  e="restart $anynode - 0" ;;
    linkcut)  e="linkcut B - $((1000 + x % 4001))" ;;
    etcd)     e="etcd e$((1 + x % 3)) - $((1000 + x / 3 % 7001))" ;;
    disk)     e="disk - - 0" ;;
  esac
  SCHED+=("$e $gap")
  # A rough cost: the pause, the fault, and the cluster settling after
  # it.  Twice the window is drawn; the run stops at the first fault that
  # would not end inside the window.
  planned=$((planned + gap + $(awk '{print $4}' <<< "$e") + 3000))
done

if [ "${SOAK_PLAN_ONLY:-0}" = 1 ]; then
  echo "schedule (seed $SEED, duration $RUN s): kind target param ms pause_ms"
  i=0; for e in "${SCHED[@]}"; do i=$((i + 1)); echo "  #$i $e"; done
  exit 0
fi

# ------------------------------------------------------------- set-up
T=$(mktemp -d /dev/shm/ap-soak.XXXXXX)
. "$(dirname "$0")/../tests/lib/cluster.sh"
NS=apsoak$$
VR=aps$$r
VB=aps$$b
NET=10.$((150 + $$ % 50)).$(($$ % 250)).
IPA=${NET}1
IPB=${NET}2
# Ports: 11000-11099 only (cluster-e2e uses 109xx, other tests 111xx+).
EPORT=(x 11000 11002 11004)          # etcd client ports (peer: +1)
declare -A LPORT=([A]=11010 [B]=11011 [C]=11012)   # NBD listeners
declare -A TPORT=([A]=11020 [B]=11021 [C]=11022)   # local-tcp (loopback)
declare -A VDISK=([A]=100 [B]=101 [C]=102)          # each verifier's disk
declare -A node_pid vpid
declare -A etcd_pid
LOOPS=()
MONPID=
START=$(date +%s.%N)
LOG=$T/soak.log

ts () { awk "BEGIN{printf \"%7.1f\", $(date +%s.%N) - $START}"; }
say () { printf '[%s] %s\n' "$(ts)" "$*" | tee -a "$LOG"; }

cleanup () {
  set +e
  trap - EXIT INT TERM
  exec 2> /dev/null     # no "Killed" notices for the jobs stopped below
  for n in A B; do [ -n "${node_pid[$n]:-}" ] && kill -CONT "${node_pid[$n]}" 2> /dev/null; done
  for p in "${vpid[@]}" "${node_pid[@]}" "${etcd_pid[@]}" $MONPID; do
    [ -n "$p" ] && kill -9 "$p" 2> /dev/null
  done
  wait 2> /dev/null
  ip netns del "$NS" 2> /dev/null
  ip link del "$VR" 2> /dev/null
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2> /dev/null; done
  if [ "${SOAK_KEEP:-0}" = 1 ]; then
    echo "soak: logs kept in $T"
  else
    rm -rf "$T"
  fi
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

die () {
  say "soak: $*"
  for n in A B C; do
    [ -s "$T/$n.log" ] && { echo "---- log of node $n"; tail -n 20 "$T/$n.log"; }
  done
  say "soak: FAIL (seed $SEED)"
  exit 1
}

say "soak: seed $SEED, duration ${RUN}s (faults during the first ${WINDOW}s)"
say "soak: replay with: make soak SEED=$SEED DURATION=$DURATION"
{
  echo "schedule (seed $SEED, duration $RUN s): kind target param ms pause_ms"
  i=0; for e in "${SCHED[@]}"; do i=$((i + 1)); echo "  #$i $e"; done
} > "$T/schedule.txt"
cat "$T/schedule.txt" >> "$LOG"
say "soak: ${#SCHED[@]} faults drawn (schedule in the log; as many as fit will run)"

# network: B in its own namespace behind a veth
cluster_net || { echo "soak: skipped: no network namespace"; exit 77; }

# registry: three etcd members, all on the veth's root-side address
CLUSTER="e1=http://$IPA:$((EPORT[1] + 1)),e2=http://$IPA:$((EPORT[2] + 1)),e3=http://$IPA:$((EPORT[3] + 1))"
ENDPOINTS="http://$IPA:${EPORT[1]},http://$IPA:${EPORT[2]},http://$IPA:${EPORT[3]}"
etcd_start () {
  local i=$1 c=${EPORT[$1]}
  etcd --name "e$i" --data-dir "$T/etcd$i" \
    --listen-client-urls "http://$IPA:$c" --advertise-client-urls "http://$IPA:$c" \
    --listen-peer-urls "http://$IPA:$((c + 1))" \
    --initial-advertise-peer-urls "http://$IPA:$((c + 1))" \
    --initial-cluster "$CLUSTER" --initial-cluster-token "soak$$" \
    --initial-cluster-state new >> "$T/etcd$i.log" 2>&1 &
  etcd_pid[e$i]=$!
}
etcd_healthy () {   # etcd_healthy I: the member answers and has a leader
  curl -s -m 1 "http://$IPA:${EPORT[$1]}/health" 2> /dev/null | grep -q '"health":"true"'
}
for i in 1 2 3; do etcd_start $i; done
for _ in $(seq 100); do
  etcd_healthy 1 && etcd_healthy 2 && etcd_healthy 3 && break
  sleep 0.2
done
for i in 1 2 3; do etcd_healthy $i || die "etcd member e$i is not healthy (log: $T/etcd$i.log)"; done

# disks: loop devices on image files, linked into the bus directory
mkdir -p "$T/bus" "$T/img" "$T/faults-A" "$T/faults-B" "$T/faults-C"
mkloop () {   # mkloop UNIT: a loop device on a 64 MiB image; prints it
  truncate -s 64M "$T/img/disk$1.img"
  losetup --find --show "$T/img/disk$1.img"
}
declare -A LOOP
for u in 100 101 102 103; do
  l=$(mkloop $u) || { echo "soak: no loop device available (losetup --find failed)"; exit 77; }
  LOOPS+=("$l"); LOOP[$u]=$l
done
for u in 100 101 102; do ln -s "${LOOP[$u]}" "$T/bus/disk$u.img"; done
HOT=103      # the hot-added disk; no verifier uses it
hot_in=0

REG="backend = etcd
endpoints = $ENDPOINTS
lease-ms = 2000"
for n in A B C; do
  ip=$IPA; [ $n = B ] && ip=$IPB
  attached=yes; [ $n = C ] && attached=no
  cluster_conf $n "$ip:${LPORT[$n]}" "$REG" "127.0.0.1:${TPORT[$n]}" $attached
done

# The units every node must have, for monitor.py; and the one it may
# have: a removed disk's unit stays on the nodes (see "disk" below).
expect_units () {
  { for u in 100 101 102; do echo "\$4\$DKB$u"; done
    [ $hot_in = 1 ] && echo "\$4\$DKB$HOT"; } > "$T/expect.units"
  echo "\$4\$DKB$HOT" > "$T/expect.extra"
}

# unit_brief NODE DEVICE: "state, on PATH, paths NAME:STATE ..." or "none"
unit_brief () {
  local out
  out=$("$BUILD/altpath" --socket "$T/$1.ctl" --timeout 5 --json show device "$2" 2> /dev/null \
    | /usr/bin/python3 -c 'import json,sys
r = json.load(sys.stdin); d = r.get("device", r)
if not r.get("ok", True) or "paths" not in d: sys.exit()
a = next((p["name"] for p in d["paths"] if p["active"]), "none")
print("%s on %s; paths %s" % (d["state"], a,
      " ".join("%s:%s" % (p["name"], p["state"]) for p in d["paths"]) or "none"))' 2> /dev/null)
  echo "${out:-no such unit}"
}

# settle SECONDS: wait until the monitor says the cluster is whole again
# (and every etcd member is healthy); sets SETTLE_MS
LONGEST_SETTLE=0
settle () {
  local t0 now state= i
  t0=$(date +%s%N)
  for _ in $(seq $(($1 * 5))); do
    sleep 0.2
    state=$(cat "$T/mon.state" 2> /dev/null)
    [ "$state" = ok ] || continue
    for i in 1 2 3; do etcd_healthy $i || { state="waiting: etcd e$i"; break; }; done
    if [ "$state" = ok ]; then
      now=$(date +%s%N)
      SETTLE_MS=$(( (now - t0) / 1000000 ))
      [ $SETTLE_MS -gt $LONGEST_SETTLE ] && LONGEST_SETTLE=$SETTLE_MS
      return 0
    fi
  done
  SETTLE_MS=-1
  say "NOT SETTLED within $1 s: $state"
  return 1
}

expect_units
say "starting nodes A, B (in netns $NS) and C; registry: etcd e1-e3 on $IPA"
cluster_start A; cluster_start B; cluster_start C
/usr/bin/python3 "$HERE/monitor.py" "$T" 0.2 &
MONPID=$!
settle 30 || die "the cluster did not come up"
say "cluster up: A and B direct, C served by A and B (took $SETTLE_MS ms)"
LONGEST_SETTLE=0

# ------------------------------------------------------------ verifiers
enc () { printf '%s' "$1" | sed 's/\$/%24/g'; }
verify () {
  local n=$1 ns=()
  [ "$n" = B ] && ns=(ip netns exec "$NS")
  "${ns[@]}" "$BUILD/ap-verify" \
    --uri "nbd://127.0.0.1:${TPORT[$n]}/$(enc "\$4\$DKB${VDISK[$n]}")" \
    --seed $((SEED * 3 + ${VDISK[$n]} - 100)) --seconds "$RUN" \
    --threads 2 --depth 4 --request-timeout 20000 --verify-timeout 60000 \
    --no-trim > "$T/verify-$n.log" 2>&1 &
  vpid[$n]=$!
}
for n in A B C; do verify $n; done
VSTART=$(date +%s)
say "verifiers started: A on \$4\$DKB100, B on \$4\$DKB101, C on \$4\$DKB102 for ${RUN}s"

# ------------------------------------------------------------ faults
declare -A count
for k in eio hang slow kill stop restart linkcut etcd hotadd remove; do count[$k]=0; done
NOTSETTLED=0
alias_of () { echo "4-DKB$1"; }
msleep () { sleep "$(awk "BEGIN{print $1/1000}")"; }

# c_server: the node whose served path carries C's $4$DKB102 now (A or B)
c_server () {
  "$BUILD/altpath" --socket "$T/C.ctl" --timeout 5 --json show device '$4$DKB102' 2> /dev/null \
    | /usr/bin/python3 -c 'import json,sys
d = json.load(sys.stdin); d = d.get("device", d)
a = next((p["name"] for p in d["paths"] if p["active"]), "")
print(a[7:] if a in ("served:A", "served:B") else "A")' 2> /dev/null || echo A
}

inject () {   # inject KIND TARGET PARAM MS
  local k=$1 n=$2 p=$3 ms=$4 f
  if [ "$n" = @ ]; then
    n=$(c_server)
    say "target @ is node $n (it carries C's \$4\$DKB102)"
  fi
  case $k in
    eio|hang)
      f="$T/faults-$n/$(alias_of "$p").$k"
      say "#$FI inject  $k on node $n's direct path to \$4\$DKB$p for $ms ms"
      touch "$f"; msleep "$ms"; rm -f "$f"
      say "#$FI restore $k on node $n \$4\$DKB$p" ;;
    slow)
      f="$T/faults-$n/$(alias_of "${p%%:*}").slow"
      say "#$FI inject  slow (${p#*:} us a completion) on node $n's direct path to \$4\$DKB${p%%:*} for $ms ms"
      echo "${p#*:}" > "$f.tmp"; mv "$f.tmp" "$f"; msleep "$ms"; rm -f "$f"
      say "#$FI restore slow on node $n \$4\$DKB${p%%:*}" ;;
    kill)
      say "#$FI inject  SIGKILL node $n (down for $ms ms)"
      kill -9 "${node_pid[$n]}"; wait "${node_pid[$n]}" 2> /dev/null
      msleep "$ms"; cluster_start "$n"
      say "#$FI restore node $n restarted (pid ${node_pid[$n]})" ;;
    stop)
      say "#$FI inject  SIGSTOP node $n for $ms ms"
      kill -STOP "${node_pid[$n]}"; msleep "$ms"; kill -CONT "${node_pid[$n]}"
      say "#$FI restore SIGCONT node $n" ;;
    restart)
      say "#$FI inject  SIGTERM node $n (daemon restart)"
      kill -TERM "${node_pid[$n]}"
      local i; for i in $(seq 150); do kill -0 "${node_pid[$n]}" 2> /dev/null || break; sleep 0.1; done
      if kill -0 "${node_pid[$n]}" 2> /dev/null; then
        say "node $n did not stop within 15 s of SIGTERM"; STUCK=1
        kill -9 "${node_pid[$n]}"
      fi
      wait "${node_pid[$n]}" 2> /dev/null
      cluster_start "$n"
      say "#$FI restore node $n started again (pid ${node_pid[$n]})" ;;
    linkcut)
      say "#$FI inject  link cut: B's veth down for $ms ms"
      ip -n "$NS" link set "$VB" down; msleep "$ms"; ip -n "$NS" link set "$VB" up
      say "#$FI restore link up" ;;
    etcd)
      say "#$FI inject  SIGKILL etcd member $n (down for $ms ms)"
      kill -9 "${etcd_pid[$n]}"; wait "${etcd_pid[$n]}" 2> /dev/null
      msleep "$ms"; etcd_start "${n#e}"
      say "#$FI restore etcd member $n restarted" ;;
    disk)
      if [ $hot_in = 0 ]; then
        k=hotadd
        say "#$FI inject  hot-add \$4\$DKB$HOT (${LOOP[$HOT]}) to the shared bus"
        ln -s "${LOOP[$HOT]}" "$T/bus/disk$HOT.img"; hot_in=1
      else
        k=remove
        say "#$FI inject  removal of \$4\$DKB$HOT from the shared bus"
        rm -f "$T/bus/disk$HOT.img"; hot_in=0
      fi
      expect_units ;;
  esac
  count[$k]=$((count[$k] + 1))
}

STUCK=0
FAULTS=0
i=0
for e in "${SCHED[@]}"; do
  i=$((i + 1))
  read -r k n p ms gap <<< "$e"
  # Run a fault only if it and the pause before it end inside the window.
  now=$(( $(date +%s) - VSTART ))
  [ $((now * 1000 + gap + ms + 2000)) -le $((WINDOW * 1000)) ] || break
  msleep "$gap"
  FI=$i; inject "$k" "$n" "$p" "$ms"
  FAULTS=$((FAULTS + 1))
  if settle 45; then
    say "settled after #$i in $SETTLE_MS ms"
  else
    NOTSETTLED=$((NOTSETTLED + 1))
  fi
  # What a removal leaves behind (reported, not judged: altpathd keeps
  # the unit of a disk that left the bus; see soak/README.md).
  if [ "$k" = disk ] && [ $hot_in = 0 ]; then
    sleep 1
    for n in A B C; do say "  after removal, node $n's \$4\$DKB$HOT: $(unit_brief $n "\$4\$DKB$HOT")"; done
  fi
done
say "fault schedule done: $FAULTS of ${#SCHED[@]} drawn faults injected"

# ------------------------------------------------------------ the end
say "waiting for the verifiers (they run ${RUN}s, then check every block)"
# They stop after RUN seconds and then read every block back; a verifier
# still running 120 s after that is stuck, which is a finding too.
declare -A vrc
VEND=$((VSTART + RUN + 120))
for n in A B C; do
  while kill -0 "${vpid[$n]}" 2> /dev/null && [ "$(date +%s)" -lt $VEND ]; do sleep 0.5; done
  if kill -0 "${vpid[$n]}" 2> /dev/null; then
    say "verifier $n still running 120 s after its end: killed"
    kill -9 "${vpid[$n]}"
  fi
  wait "${vpid[$n]}"; vrc[$n]=$?
  unset "vpid[$n]"
done
settle 30 || NOTSETTLED=$((NOTSETTLED + 1))
UNHEALTHY=()
for n in A B C; do
  kill -0 "${node_pid[$n]}" 2> /dev/null || UNHEALTHY+=("$n:dead")
  "$BUILD/altpath" --socket "$T/$n.ctl" --timeout 5 ping > /dev/null 2>&1 || UNHEALTHY+=("$n:no-answer")
done
kill -TERM "$MONPID"; wait "$MONPID" 2> /dev/null; MONPID=

# verifier figures
vget () {   # vget NODE REGEX: the first number after REGEX in the report
  local pat=$2
  [[ $pat == ^* ]] || pat="^.*$pat"
  sed -n "s/$pat[^0-9]*\([0-9][0-9.]*\).*$/\1/p" "$T/verify-$1.log" | head -n 1
}
vn () { local v; v=$(vget "$@"); echo "${v:-0}"; }   # the same, 0 if absent
bad=0
printf '\n%-34s %12s %12s %12s\n' "soak summary (seed $SEED)" "A" "B" "C" | tee -a "$LOG"
row () { printf '%-34s %12s %12s %12s\n' "$@" | tee -a "$LOG"; }
declare -A V
for n in A B C; do
  V[ver$n]=$(vget $n '^blocks verified: ')
  V[req$n]=$(vget $n '^requests: ')
  V[err$n]=$(vget $n '^errors returned to callers: ')
  V[lost$n]=$(vget $n 'lost writes (invariant 4)')
  V[dup$n]=$(( $(vn $n 'duplicate completions (invariant 2)') + $(vn $n 'never-completed requests (invariant 2)') ))
  V[stale$n]=$(( $(vn $n 'stale writes landed (invariant 3, live)') + $(vn $n 'stale blocks (invariant 3)') ))
  V[ovl$n]=$(( $(vn $n 'two-path overlaps, unit level (invariant 1)') + $(vn $n 'two-path overlaps, disk level (invariant 1)') ))
  V[corr$n]=$(( $(vn $n '^  corrupt blocks') + $(vn $n 'read mismatches') ))
  V[gap$n]=$(vget $n '^longest gap between completions: ')
  grep -q 'PASS (0 violations)' "$T/verify-$n.log" || bad=1
  [ "${vrc[$n]}" = 0 ] || bad=1
done
M=$(cat "$T/mon.summary.json" 2> /dev/null || echo '{}')
mon () { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$M" "$1" 2> /dev/null || echo "?"; }
row "verifier exit status" "${vrc[A]}" "${vrc[B]}" "${vrc[C]}"
row "requests submitted" "${V[reqA]:-?}" "${V[reqB]:-?}" "${V[reqC]:-?}"
row "blocks verified" "${V[verA]:-?}" "${V[verB]:-?}" "${V[verC]:-?}"
row "errors returned to callers" "${V[errA]:-?}" "${V[errB]:-?}" "${V[errC]:-?}"
row "lost writes" "${V[lostA]:-?}" "${V[lostB]:-?}" "${V[lostC]:-?}"
row "duplicated / never completed" "${V[dupA]}" "${V[dupB]}" "${V[dupC]}"
row "stale writes (live + blocks)" "${V[staleA]}" "${V[staleB]}" "${V[staleC]}"
row "corrupt blocks / read mismatches" "${V[corrA]}" "${V[corrB]}" "${V[corrC]}"
row "two paths in flight (verifier)" "${V[ovlA]}" "${V[ovlB]}" "${V[ovlC]}"
row "switches made (daemon units)" "$(mon 'd["switches"]["A"]')" "$(mon 'd["switches"]["B"]')" "$(mon 'd["switches"]["C"]')"
row "longest stall (ms)" "${V[gapA]:-?}" "${V[gapB]:-?}" "${V[gapC]:-?}"
MOVL=$(mon 'd["overlaps"]')
echo | tee -a "$LOG"
say "two paths in flight (monitor, sampled every 0.2 s over $(mon 'd["rounds"]') rounds): $MOVL"
say "faults injected: $FAULTS ($(for k in eio hang slow kill stop restart linkcut etcd hotadd remove; do printf '%s %s, ' $k "${count[$k]}"; done | sed 's/, $//'))"
say "longest time to settle after a fault: $LONGEST_SETTLE ms; times it did not settle: $NOTSETTLED"
say "daemons: ${UNHEALTHY[*]:-all three alive and answering}"
[ "$MOVL" = 0 ] || bad=1
[ $NOTSETTLED = 0 ] || bad=1
[ $STUCK = 0 ] || bad=1
[ ${#UNHEALTHY[@]} = 0 ] || bad=1
ELAPSED=$(ts)
if [ $bad = 0 ]; then
  say "soak: PASS (seed $SEED, ${RUN}s, wall clock ${ELAPSED# }s)"
  say "soak: replay with: make soak SEED=$SEED DURATION=$DURATION"
  exit 0
fi
for n in A B C; do echo "---- verifier $n"; tail -n 25 "$T/verify-$n.log"; done
for n in A B C; do echo "---- log of node $n"; tail -n 30 "$T/$n.log"; done
echo "---- monitor"; tail -n 10 "$T/mon.log" 2> /dev/null
say "soak: FAIL (seed $SEED)"
say "soak: replay with: make soak SEED=$SEED DURATION=$DURATION"
exit 1
