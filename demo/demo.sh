#!/usr/bin/env bash
# demo.sh — the main job (`make demo`): a three-node altpath cluster on
# this host, a filesystem on one of its units, a failover and a failback,
# narrated for a newcomer, then everything torn down.
#
#   ALPHA ─┐ shared port B (allocation class 4): a directory of disk
#   BETA  ─┘ images standing for a shared bus; both reach $4$DKB100
#            directly, and each also through the other (served)
#   GAMMA    attached to nothing: reaches every disk served
#
# Needs root (FUSE device files, loop devices, mount).  Without root it
# runs ap-demo instead: one unit over two paths in one process.
# Ctrl-C at any moment tears everything down.
set -uo pipefail

BUILD=${BUILD:-build}
if [ "$(id -u)" != 0 ]; then
  echo "demo: not root: the cluster demo needs FUSE, loop devices and mount."
  echo "demo: running the single-process demo (ap-demo) instead."
  exec "$BUILD/ap-demo"
fi
for t in losetup mkfs.ext4 fsck.ext4 mount umount sha256sum fusermount3; do
  command -v "$t" > /dev/null || { echo "demo: needs $t"; exit 1; }
done

T=$(mktemp -d /dev/shm/altpath-demo.XXXXXX)
MNT=$T/mnt
LOOP=
declare -A PID
WATCH=
WRITER=
START=$(date +%s.%N)

bold () { printf '\n\033[1m%s\033[0m\n' "$*"; }
say () { printf '[%5.1f s] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $START}")" "$*"; }
ap () { local n=$1; shift; "$BUILD/altpath" --socket "$T/$n.ctl" "$@"; }

teardown () {
  set +e
  trap - EXIT INT TERM
  echo
  say "tearing down: unmount, detach the loop device, stop the nodes"
  [ -n "$WRITER" ] && kill "$WRITER" 2> /dev/null && wait "$WRITER" 2> /dev/null
  [ -n "$WATCH" ] && kill "$WATCH" 2> /dev/null && wait "$WATCH" 2> /dev/null
  mountpoint -q "$MNT" 2> /dev/null && umount "$MNT"
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2> /dev/null
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2> /dev/null; done
  for n in "${!PID[@]}"; do
    for _ in $(seq 50); do kill -0 "${PID[$n]}" 2> /dev/null || break; sleep 0.1; done
    kill -9 "${PID[$n]}" 2> /dev/null
  done
  wait 2> /dev/null
  for d in "$T"/dev-*; do
    mountpoint -q "$d" 2> /dev/null && { fusermount3 -u "$d" 2> /dev/null || umount -l "$d"; }
  done
  rm -rf "$T"
  say "done: no process, mount or file left behind"
}
trap teardown EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

die () { say "FAILED: $*"; for n in ALPHA BETA GAMMA; do echo "--- $n log"; tail -n 15 "$T/$n.log" 2> /dev/null; done; exit 1; }

# wait_path NODE DEVICE PATTERN SECONDS: until the unit is on that path
active () {
  ap "$1" --json show device "$2" 2> /dev/null | /usr/bin/python3 -c 'import json,sys
d = json.load(sys.stdin); d = d.get("device", d)
print(next((p["name"] for p in d["paths"] if p["active"]), "none"))' 2> /dev/null
}
wait_path () {
  local got=
  for _ in $(seq $(($4 * 10))); do
    got=$(active "$1" "$2"); [[ $got == $3 ]] && return 0; sleep 0.1
  done
  die "$2 on $1 is on '$got', expected '$3'"
}

bold "altpath demo: three nodes, one shared bus, one failover"
say "working directory: $T (tmpfs; everything in it goes at the end)"
mkdir -p "$T/bus" "$T/registry" "$MNT"
for u in 100 101; do truncate -s 256M "$T/bus/disk$u.img"; done
say "the shared bus: two disk images, $T/bus/disk100.img and disk101.img"

conf () {
  cat > "$T/$1.conf" <<EOF
# Node $1 of the demo (see docs/configuration.md for every key).
[node]
name = $1
[listen]
address = unix:$T/$1-nbd.sock
[registry]
backend = dir
dir = $T/registry
lease-ms = 1500
[cluster]
local-socket = $T/$1.sock
state-file = $T/$1.state.json
devices = $T/dev-$1
fault-dir = $T/faults-$1
request-timeout-ms = 500
checker-interval-ms = 250
failback-ms = 3000
deadline-ms = 500
[control]
socket = $T/$1.ctl
EOF
  mkdir -p "$T/faults-$1"
  if [ "$2" = attached ]; then
    cat >> "$T/$1.conf" <<EOF
[port B]
alloclass = 4
glob = $T/bus/disk*.img
EOF
  fi
}
conf ALPHA attached
conf BETA attached
conf GAMMA none
say "ALPHA and BETA attach port B with allocation class 4, so its disks are"
say "named \$4\$DKB100 and \$4\$DKB101 on every node; GAMMA attaches nothing."

for n in ALPHA BETA GAMMA; do
  "$BUILD/altpathd" --config "$T/$n.conf" > "$T/$n.log" 2>&1 &
  PID[$n]=$!
done
say "started altpathd on ALPHA, BETA and GAMMA (logs in $T/*.log)"
for n in ALPHA BETA GAMMA; do
  for _ in $(seq 100); do
    [ -e "$T/dev-$n/4-DKB100" ] && [ -e "$T/dev-$n/4-DKB101" ] && break
    sleep 0.1
  done
  [ -e "$T/dev-$n/4-DKB100" ] || die "node $n did not make its units"
done
wait_path ALPHA '$4$DKB100' direct 10
wait_path GAMMA '$4$DKB100' 'served:*' 10

bold "The cluster, as GAMMA sees it (altpath show cluster)"
ap GAMMA show cluster
bold "ALPHA's devices (altpath show devices): direct paths in use"
ap ALPHA show devices
bold "GAMMA's devices: the same disks, served by ALPHA or BETA"
ap GAMMA show devices

bold "A filesystem on ALPHA's unit \$4\$DKB100"
LOOP=$(losetup --direct-io=on -f --show "$T/dev-ALPHA/4-DKB100") || die "losetup"
say "losetup: $T/dev-ALPHA/4-DKB100 is $LOOP"
mkfs.ext4 -q -F "$LOOP" || die "mkfs.ext4"
mount "$LOOP" "$MNT" || die "mount"
say "mkfs.ext4 and mount: $MNT"

writer () {
  local i=0
  while :; do
    head -c $((256 * 1024 + RANDOM * 8)) /dev/urandom > "$MNT/file$i.tmp" \
      && mv "$MNT/file$i.tmp" "$MNT/file$i" && sync -f "$MNT/file$i" || echo "writer: error on file$i"
    i=$((i + 1))
    sleep 0.05
  done
}
writer & WRITER=$!
say "a writer now creates files on it without pause"
sleep 2

bold "Before the fault (altpath show device \$4\$DKB100 --full on ALPHA)"
ap ALPHA show device '$4$DKB100' --full

bold "FAULT: ALPHA's direct path to \$4\$DKB100 starts failing every I/O (EIO)"
ap ALPHA watch >> "$T/watch.log" 2>&1 & WATCH=$!
sleep 0.3
touch "$T/faults-ALPHA/4-DKB100.eio"
wait_path ALPHA '$4$DKB100' 'served:BETA' 10
sleep 1
say "what altpath watch printed at the moment of the switch:"
sed 's/^/    /' "$T/watch.log"
bold "After the fault: I/O goes through BETA; the writer saw no error"
ap ALPHA show device '$4$DKB100' --full
sleep 2

bold "REPAIR: the direct path works again; failback after 3 s of health"
: > "$T/watch.log"
rm -f "$T/faults-ALPHA/4-DKB100.eio"
wait_path ALPHA '$4$DKB100' direct 15
sleep 0.5
sed 's/^/    /' "$T/watch.log"
ap ALPHA show device '$4$DKB100'
kill "$WATCH" 2> /dev/null; wait "$WATCH" 2> /dev/null; WATCH=
sleep 1
kill "$WRITER" 2> /dev/null; wait "$WRITER" 2> /dev/null; WRITER=

bold "Checking the filesystem and the files"
rm -f "$MNT"/*.tmp
nfiles=$(ls "$MNT" | grep -c '^file')
(cd "$MNT" && sha256sum file* > "$T/sums")
sync
umount "$MNT" || die "umount"
fsck.ext4 -n -f "$LOOP" > "$T/fsck.log" 2>&1 || { cat "$T/fsck.log"; die "fsck found errors"; }
say "fsck.ext4 -n: clean"
mount "$LOOP" "$MNT" || die "mount again"
(cd "$MNT" && sha256sum --quiet -c "$T/sums") || die "a file changed"
say "mounted again: all $nfiles files read back with their checksums"
grep -q "writer: error" "$T"/*.log 2> /dev/null && die "the writer saw an error"
umount "$MNT"
losetup -d "$LOOP"; LOOP=

bold "Result: the path failed and came back under a mounted filesystem;"
bold "the application saw no error and nothing was lost."
exit 0
