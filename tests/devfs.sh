#!/usr/bin/env bash
# devfs.sh — device files (issue 5): a unit as a file, a loop device on
# it, ext4 on that, and a path failure in the middle of the writes.
#
#   node A ─ direct ──┐ shared port B, alloclass 4: one 256 MiB image in
#   node B ─ direct ──┘ /dev/shm (the "bus"); both nodes attach it
#   A's unit $4$DKB100 = "direct" (active) + "served:B" (standby)
#   A's device files in $T/dev: $4$DKB100 and 4-DKB100
#
# The test: losetup --direct-io on A's 4-DKB100, mkfs.ext4, mount; four
# writers write files of random content (some with O_DIRECT, some
# through the page cache); in the middle, the fault trigger fails A's
# direct path (EIO), A's unit fails over to served:B, the writers carry
# on and see no error.  Then: sync, umount, fsck.ext4 -n clean, mount
# again and every file's sha256 intact, umount, losetup -d, both daemons
# stop on SIGTERM, nothing left mounted or running.
#
# Needs root, /dev/fuse, loop devices, losetup, mkfs.ext4, fsck.ext4 and
# python3 (for the control socket); skips (77) without them.
set -uo pipefail

BUILD=${BUILD:-$(pwd)/build}
altpathd=$BUILD/altpathd
skip() { echo "SKIP: $*"; exit 77; }
[ -x "$altpathd" ] || skip "$altpathd is not built"
[ "$(id -u)" = 0 ] || skip "needs root (FUSE mount, loop devices)"
[ -c /dev/fuse ] || skip "no /dev/fuse"
for t in losetup mkfs.ext4 fsck.ext4 mount umount mountpoint sha256sum \
         python3; do
  command -v $t > /dev/null || skip "$t is missing"
done
losetup -f > /dev/null 2>&1 || skip "no free loop device (losetup -f)"

T=$(mktemp -d /dev/shm/ap-devfs.XXXXXX)
DEV=$T/dev
MNT=$T/mnt
pidA= pidB= loop= writers=()
START=$(date +%s.%N)
log() { printf '[%5.1f] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $START}")" "$*"; }

cleanup() {
  set +e
  for p in "${writers[@]}"; do kill -9 "$p" 2> /dev/null; done
  mountpoint -q "$MNT" 2> /dev/null && umount "$MNT"
  [ -n "$loop" ] && losetup -d "$loop" 2> /dev/null
  for p in $pidA $pidB; do
    kill -TERM "$p" 2> /dev/null
  done
  for _ in $(seq 50); do
    kill -0 $pidA 2> /dev/null || kill -0 $pidB 2> /dev/null || break
    sleep 0.1
  done
  for p in $pidA $pidB; do kill -KILL "$p" 2> /dev/null; done
  wait 2> /dev/null
  if mountpoint -q "$DEV" 2> /dev/null; then
    fusermount3 -u "$DEV" 2> /dev/null || umount -l "$DEV"
  fi
  rm -rf "$T"
}
trap cleanup EXIT

die() {
  log "FAIL: $*"
  for n in A B; do
    echo "----- altpathd $n's log (last 40 lines) -----"
    tail -n 40 "$T/$n.log" 2> /dev/null
  done
  exit 1
}

# ctl NODE JSON: one request on NODE's control socket, its reply line.
ctl() {
  python3 - "$T/$1.ctl" "$2" << 'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
print(buf.decode().strip())
EOF
}

# paths NODE DEVICE: "name=state[*]" per path of the unit (* = active).
paths() {
  ctl "$1" "{\"version\":1,\"cmd\":\"show\",\"device\":\"$2\"}" \
    | python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)
except Exception:
    sys.exit(0)
def find(o):
    if isinstance(o, dict):
        if isinstance(o.get("paths"), list):
            return o["paths"]
        for v in o.values():
            p = find(v)
            if p is not None:
                return p
    return None
for p in find(r) or []:
    print("%s=%s%s" % (p.get("name"), p.get("state"),
                       "*" if p.get("active") else ""))
' 2> /dev/null | sort | tr '\n' ' '
}

# --------------------------------------------------------------- set-up
mkdir -p "$T/bus" "$T/reg" "$T/faults-A" "$T/faults-B" "$DEV" "$MNT"
truncate -s 256M "$T/bus/disk100.img"
base=$((20000 + $$ % 20000))

conf() {  # NODE PORT DEVICES
  cat > "$T/$1.conf" << EOF
[node]
name = $1
[listen]
address = 127.0.0.1:$2
tls = off
[registry]
backend = dir
dir = $T/reg
lease-ms = 1500
[cluster]
local-socket = $T/$1.sock
state-file = $T/$1.state.json
fault-dir = $T/faults-$1
devices = $3
request-timeout-ms = 1000
checker-interval-ms = 200
failback-ms = 600000
deadline-ms = 500
direct-wait-ms = 500
[control]
socket = $T/$1.ctl
[port B]
alloclass = 4
glob = $T/bus/disk*.img
EOF
}
conf A $base "$DEV"
conf B $((base + 1)) none

"$altpathd" --config "$T/B.conf" > "$T/B.log" 2>&1 &
pidB=$!
"$altpathd" --config "$T/A.conf" > "$T/A.log" 2>&1 &
pidA=$!

# ------------------------------------------------ the files, two paths
for _ in $(seq 100); do
  [ -e "$DEV/4-DKB100" ] && break
  kill -0 $pidA 2> /dev/null || die "altpathd A exited"
  sleep 0.1
done
[ -e "$DEV/4-DKB100" ] || die "no $DEV/4-DKB100 after 10 s"
[ -e "$DEV/\$4\$DKB100" ] || die "no $DEV/\$4\$DKB100 beside its alias"
# shellcheck disable=SC2012
ls -l "$DEV"
[ "$(stat -c '%s %a %u %h' "$DEV/4-DKB100")" = "268435456 600 0 2" ] \
  || die "4-DKB100: size, mode, owner, links: $(stat -c '%s %a %u %h' "$DEV/4-DKB100"), want 268435456 600 0 2"
[ "$(stat -c %i "$DEV/4-DKB100")" = "$(stat -c %i "$DEV/\$4\$DKB100")" ] \
  || die "the device name and its alias are not one file"
log "ok: $DEV holds \$4\$DKB100 and 4-DKB100: one file, 256 MiB, 0600 root"

want="direct=active* served:B=standby "
for _ in $(seq 100); do
  got=$(paths A '$4$DKB100')
  [ "$got" = "$want" ] && break
  sleep 0.1
done
[ "$got" = "$want" ] || die "A's unit has paths '$got', want '$want'"
log "ok: A's unit is on its direct path with served:B standing by"

# ------------------------------------------------ unaligned writes
# 8 threads write 64-byte pieces of the same 512-byte blocks at once
# (each thread its own piece of each block): every write is a read-
# modify-write of its block, and none may lose another's bytes.
python3 - "$DEV/4-DKB100" << 'EOF' || die "concurrent unaligned writes lost bytes"
import os, random, sys, threading
fd = os.open(sys.argv[1], os.O_RDWR)
nthreads, blocks, bs = 8, 64, 512
piece = bs // nthreads
os.pwrite(fd, bytes(bs * blocks), 0)
last = [dict() for _ in range(nthreads)]
def run(t):
    rnd = random.Random(t)
    order = list(range(blocks)) * 4
    rnd.shuffle(order)
    for i, b in enumerate(order):
        val = bytes([(t * 31 + i) % 251 + 1]) * piece
        os.pwrite(fd, val, b * bs + t * piece)
        last[t][b] = val
ths = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
for th in ths: th.start()
for th in ths: th.join()
data = os.pread(fd, bs * blocks, 0)
bad = sum(data[b * bs + t * piece:b * bs + (t + 1) * piece] != last[t][b]
          for t in range(nthreads) for b in range(blocks))
print("%d of %d pieces lost" % (bad, nthreads * blocks))
sys.exit(1 if bad else 0)
EOF
log "ok: concurrent unaligned writes to shared blocks lost nothing"

# ------------------------------------------------ loop, mkfs, mount
loop=$(losetup -f --show --direct-io=on "$DEV/4-DKB100") \
  || die "losetup on $DEV/4-DKB100 failed"
log "ok: $loop on 4-DKB100 (direct I/O: $(cat /sys/block/${loop#/dev/}/loop/dio))"
mkfs.ext4 -q -F "$loop" || die "mkfs.ext4 $loop failed"
mount "$loop" "$MNT" || die "mount $loop failed"
log "ok: ext4 made and mounted"

# ------------------------------------------------ writes, failover
# writer N: 16 files of 1 to 4 MiB of random data, their checksums in
# sums.N; even writers use O_DIRECT, odd ones the page cache with an
# fsync per file.
writer() {
  local n=$1 i size flag
  for i in $(seq 16); do
    size=$((1 + (n * 7 + i * 3) % 4))
    if [ $((n % 2)) = 0 ]; then flag=oflag=direct; else flag=conv=fsync; fi
    head -c $((size << 20)) /dev/urandom > "$T/src.$n.$i" || return 1
    (cd "$T" && sha256sum "src.$n.$i" | sed "s/src/f/") >> "$T/sums.$n"
    dd if="$T/src.$n.$i" of="$MNT/f.$n.$i" bs=1M $flag status=none \
      || { echo "writer $n: dd of f.$n.$i failed"; return 1; }
    rm -f "$T/src.$n.$i"
    [ "$n.$i" = 0.6 ] && touch "$T/halfway"
  done
  return 0
}
for n in 0 1 2 3; do
  writer $n &
  writers+=($!)
done
for _ in $(seq 300); do
  [ -e "$T/halfway" ] && break
  sleep 0.1
done
[ -e "$T/halfway" ] || die "the writers did not get halfway in 30 s"
touch "$T/faults-A/4-DKB100.eio"
log "A's direct path fails (EIO) from now on"
for _ in $(seq 100); do
  grep -q 'now on path served:B, was direct' "$T/A.log" && break
  sleep 0.1
done
grep -q 'now on path served:B, was direct' "$T/A.log" \
  || die "A's log does not show the switch from direct to served:B"
running=0
for p in "${writers[@]}"; do
  kill -0 "$p" 2> /dev/null && running=$((running + 1))
done
[ $running -gt 0 ] \
  || die "the writers were done before the failover: it was not in the middle"
log "ok: A's unit switched to served:B with $running of 4 writers still writing"
bad=0
for p in "${writers[@]}"; do
  wait "$p" || bad=1
done
writers=()
[ $bad = 0 ] || die "a writer saw an error"
sync || die "sync failed"
log "ok: 4 writers wrote 64 files, no error seen"

got=$(paths A '$4$DKB100')
case $got in
  *"served:B=active*"*) ;;
  *) die "after the fault A's unit has paths '$got', want served:B active" ;;
esac
log "ok: A's unit failed over: $got"

# ------------------------------------------------ fsck, checksums
umount "$MNT" || die "umount failed"
fsck.ext4 -n -f "$loop" > "$T/fsck.log" 2>&1 \
  || { cat "$T/fsck.log"; die "fsck.ext4 -n found problems"; }
log "ok: fsck.ext4 -n -f is clean"
mount "$loop" "$MNT" || die "mount again failed"
cat "$T"/sums.* > "$T/sums"
[ "$(wc -l < "$T/sums")" = 64 ] || die "$(wc -l < "$T/sums") checksums, want 64"
(cd "$MNT" && sha256sum --quiet -c "$T/sums") || die "checksums differ"
log "ok: all 64 files read back intact (through served:B)"
umount "$MNT" || die "umount failed"
losetup -d "$loop" || die "losetup -d $loop failed"
loop=
rm -f "$T/faults-A/4-DKB100.eio"

# ------------------------------------------------ stop
kill -TERM $pidA $pidB
for _ in $(seq 100); do
  kill -0 $pidA 2> /dev/null || kill -0 $pidB 2> /dev/null || break
  sleep 0.1
done
kill -0 $pidA 2> /dev/null && die "altpathd A still runs 10 s after SIGTERM"
kill -0 $pidB 2> /dev/null && die "altpathd B still runs 10 s after SIGTERM"
wait $pidA; stA=$?
wait $pidB; stB=$?
pidA= pidB=
[ $stA = 0 ] && [ $stB = 0 ] || die "exit status A $stA, B $stB, want 0"
mountpoint -q "$DEV" && die "$DEV is still mounted after altpathd stopped"
grep -q "devfs: $DEV unmounted" "$T/A.log" || die "A did not log the unmount"
log "ok: both daemons stopped (exit 0); nothing mounted on $DEV"
echo "PASS"
exit 0
