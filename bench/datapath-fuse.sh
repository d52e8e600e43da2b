#!/usr/bin/env bash
# bench/datapath-fuse.sh — altpathd's FUSE device file (docs/devices.md)
# against nbdfuse over nbdkit's file plugin, for the same file, with the
# same fio on both (issue 6).
#
# 1. Makes a SIZE image in DP_IMAGE_DIR (default /dev/shm) named like a
#    disk of a port (disk100.img, port B, alloclass 4) and fills it.
# 2. Starts one altpathd node (a directory registry, no peers) whose unit
#    $4$DKB100 is that file over one direct path, with its device files in
#    the work directory (4-DKB100); and nbdfuse on another directory,
#    running `nbdkit -s file IMAGE` as its server.
# 3. For each workload, RUNS times, alternating which goes first: fio
#    --ioengine=libaio --direct=1, one job, on each file, with the same
#    block size, queue depth, measured time and warm-up.
# 4. Appends one line per measurement to RESULTS (bench/lib.sh).
# Both FUSE mounts are taken down and both servers stopped by PID, also on
# Ctrl-C; altpathd must exit 0 on SIGTERM.
#
# Exit status: 0 every tool ran; 1 a tool or a server failed, crashed or
# hung; 2 something needed is missing; 77 skipped (not root, no /dev/fuse:
# the reason on the last line of stderr).
#
# Environment:
#   BUILD=dir          altpathd (default build)
#   QUICK=1            RUNS=1 DP_SECONDS=0.7 DP_RAMP=0.2 SIZE=128M and the
#                      workloads "randread:4k:32 seqread:1M:8"
#   RUNS=n             runs per tool and workload (default 3)
#   DP_SECONDS=s       measured seconds per run (default 1)
#   DP_RAMP=s          warm-up (default 0.25)
#   SIZE=size          the image (default 512M)
#   DP_IMAGE_DIR=dir   default /dev/shm
#   DP_WORKLOADS="..." NAME:BS:QD list (as datapath-served.sh)
#   RESULTS=file       where the figures go (default: only printed)
set -uo pipefail

ME=datapath-fuse.sh
srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir" || exit 2
export LC_ALL=C
# shellcheck source=bench/lib.sh
. bench/lib.sh

dp_settings "randread:4k:32 seqread:1M:8"

[ "$(id -u)" = 0 ] || { say "$ME: skipped: needs root (FUSE mounts; altpathd's device files are root only)"; exit 77; }
[ -c /dev/fuse ] || { say "$ME: skipped: no /dev/fuse"; exit 77; }

altpathd=$BUILD/altpathd
missing=0
[ -x "$altpathd" ] || { say "$ME: $altpathd is missing: build it first (make, or set BUILD=dir)"; missing=1; }
for t in fio nbdfuse nbdkit fusermount3 mountpoint timeout awk /usr/bin/python3; do
  command -v "$t" >/dev/null || { say "$ME: $t is not installed (scripts/install-deps.sh installs it)"; missing=1; }
done
((missing)) && exit 2

work=$(mktemp -d "$DP_IMAGE_DIR/altpath-fuse-bench.XXXXXX") \
  || { say "$ME: cannot make a directory in $DP_IMAGE_DIR"; exit 2; }
APID='' NPID=''
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if mountpoint -q "$work/nbdfuse" 2>/dev/null; then
    fusermount3 -u "$work/nbdfuse" 2>/dev/null || umount -l "$work/nbdfuse"
  fi
  for p in $APID $NPID; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 50); do
    kill -0 "$APID" 2>/dev/null || kill -0 "$NPID" 2>/dev/null || break
    sleep 0.1
  done
  for p in $APID $NPID; do kill -KILL "$p" 2>/dev/null; done
  if mountpoint -q "$work/dev" 2>/dev/null; then
    fusermount3 -u "$work/dev" 2>/dev/null || umount -l "$work/dev"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/bus" "$work/reg" "$work/dev" "$work/nbdfuse"
img=$work/bus/disk100.img
step "making a $SIZE image in $work/bus"
run_tool "fio (fill)" 300 "$work/fill" -- \
  fio --name=fill --filename="$img" --size="$SIZE" --rw=write --bs=1M \
      --ioengine=psync --output-format=terse || exit 1

# ------------------------------------------------------------- altpathd
ALOG=$work/altpathd.log
for _try in 1 2 3; do            # another process may take the free port
  port=$(free_port)
  cat >"$work/altpathd.conf" <<EOF
[node]
name = bench
[listen]
address = 127.0.0.1:$port
tls = off
[registry]
backend = dir
dir = $work/reg
[cluster]
local-socket = $work/local.sock
state-file = $work/state.json
devices = $work/dev
[control]
socket = $work/control.sock
[port B]
alloclass = 4
glob = $work/bus/disk*.img
EOF
  "$altpathd" --config "$work/altpathd.conf" >"$ALOG" 2>&1 &
  APID=$!
  for _ in $(seq 1 100); do
    [ -e "$work/dev/4-DKB100" ] && break
    kill -0 "$APID" 2>/dev/null || break
    sleep 0.1
  done
  [ -e "$work/dev/4-DKB100" ] && break
  if kill -0 "$APID" 2>/dev/null; then
    tool_failed altpathd 124 "$ALOG" "no device file $work/dev/4-DKB100 within 10 s"
    exit 1
  fi
  wait "$APID" 2>/dev/null; APID=
  grep -qi -e 'in use' -e 'bind' "$ALOG" && continue
  tool_failed altpathd 1 "$ALOG" "exited at start"
  exit 1
done
[ -n "$APID" ] || { tool_failed altpathd 1 "$ALOG" "could not bind a port in 3 tries"; exit 1; }
ours_file=$work/dev/4-DKB100

# -------------------------------------------------------------- nbdfuse
NLOG=$work/nbdfuse.log
nbdfuse "$work/nbdfuse/disk" --command nbdkit -s file "$img" >"$NLOG" 2>&1 &
NPID=$!
for _ in $(seq 1 100); do
  [ -e "$work/nbdfuse/disk" ] && break
  kill -0 "$NPID" 2>/dev/null || break
  sleep 0.1
done
[ -e "$work/nbdfuse/disk" ] || { tool_failed nbdfuse 1 "$NLOG" "no $work/nbdfuse/disk within 10 s"; exit 1; }
peer_file=$work/nbdfuse/disk

# ---------------------------------------------------------- measurements
limit=$(awk -v s="$DP_SECONDS" -v r="$DP_RAMP" 'BEGIN { printf "%d", s + r + 60 }')
for ((run = 1; run <= RUNS; run++)); do
  for w in $DP_WORKLOADS; do
    IFS=: read -r mode bs qd <<<"$w"
    rw=$(fio_rw "$mode") || { say "$ME: unknown workload $w"; exit 2; }
    case $mode in *read) dir="read" ;; *) dir="write" ;; esac
    row="$mode $bs QD$qd"
    if ((run % 2)); then order="peer ours"; else order="ours peer"; fi
    for who in $order; do
      if [ "$who" = ours ]; then f=$ours_file tool="altpathd device file"
      else f=$peer_file tool="nbdfuse + nbdkit file"; fi
      out=$work/$mode.$bs.$qd.$who.$run
      step "run $run/$RUNS $row: $tool"
      run_tool "fio ($tool)" "$limit" "$out" -- \
        fio --name="$mode" --filename="$f" --size="$SIZE" --rw="$rw" \
            --bs="$bs" --iodepth="$qd" --ioengine=libaio --direct=1 --numjobs=1 \
            --time_based --runtime="$(fio_ms "$DP_SECONDS")" --ramp_time="$(fio_ms "$DP_RAMP")" \
            --norandommap --randrepeat=0 --lat_percentiles=1 \
            --output-format=terse --terse-version=3 \
        && { record_io fuse "$row" "$tool" "$who" "$run" "$(parse_fio "$out" "$dir")" "$bs" \
             || tool_failed "fio ($tool)" 1 "$out" "no terse output"; }
    done
    kill -0 "$APID" 2>/dev/null || { tool_failed altpathd 1 "$ALOG" "altpathd died during the runs"; APID=; exit 1; }
    kill -0 "$NPID" 2>/dev/null || { tool_failed nbdfuse 1 "$NLOG" "nbdfuse died during the runs"; NPID=; exit 1; }
  done
done

# nbdfuse exits when its mount goes; altpathd takes its own down on SIGTERM.
fusermount3 -u "$work/nbdfuse" 2>"$work/umount.err" \
  || tool_failed fusermount3 1 "$work/umount.err" "-u $work/nbdfuse"
stop_pid "$NPID" nbdfuse "$NLOG" >/dev/null
NPID=
stop_pid "$APID" altpathd "$ALOG"; rc=$?
APID=
[ "$rc" = 0 ] || [ "$rc" = 124 ] || tool_failed altpathd "$rc" "$ALOG" "exited with status $rc on SIGTERM"
if mountpoint -q "$work/dev"; then
  tool_failed altpathd 1 "$ALOG" "left $work/dev mounted after it stopped"
fi
if grep -v -e '^altpathd: info:' -e '^altpath: info:' "$ALOG" | grep -q .; then
  say "$ME: altpathd logged, beyond its info lines:"
  grep -v -e '^altpathd: info:' -e '^altpath: info:' "$ALOG" | sort | uniq -c | head -n 20 >&2
fi
((failed)) && exit 1
exit 0
