#!/usr/bin/env bash
# bench/datapath-served.sh — a unit over one served path (lib/path-served.c,
# libnbd) against fio's nbd engine, both against the same altpathd serving
# the same file (issue 6, "a served path against fio's nbd engine on the
# same server").
#
# 1. Makes a SIZE image in DP_IMAGE_DIR (default /dev/shm: tmpfs, so the
#    disk does not hide the protocol's cost) and fills it.
# 2. Starts altpathd serving it on 127.0.0.1 TCP, plaintext (a node's
#    served paths are TCP).
# 3. For each workload, RUNS times, alternating which goes first:
#      fio       --ioengine=nbd --uri=URI (one connection per job, one job)
#      ap-bench  --uri URI --connections 1 (a unit whose one path is a
#                served path with one connection, like fio's)
#    with the same block size, queue depth, measured time and warm-up.
# 4. Appends one line per measurement to RESULTS (bench/lib.sh describes
#    the format); bench/report.py makes the tables and plots.
# altpathd is stopped by its PID (also on Ctrl-C) and must exit 0.
#
# Exit status: 0 every tool ran; 1 a tool or altpathd failed, crashed or
# hung; 2 something needed is missing.
#
# Environment:
#   BUILD=dir          altpathd and bench/ap-bench (default build)
#   QUICK=1            RUNS=1 DP_SECONDS=0.7 DP_RAMP=0.2 SIZE=128M and the
#                      workloads "randread:4k:32 seqwrite:1M:8"
#   RUNS=n             runs per tool and workload (default 3)
#   DP_SECONDS=s       measured seconds per run (default 1)
#   DP_RAMP=s          warm-up before measuring, both tools (default 0.25)
#   SIZE=size          the image (default 512M)
#   DP_IMAGE_DIR=dir   default /dev/shm
#   DP_WORKLOADS="..." NAME:BS:QD list (default: seqread and seqwrite 1M
#                      QD8, randread and randwrite 4k QD1 and QD32)
#   RESULTS=file       where the figures go (default: only printed)
set -uo pipefail

ME=datapath-served.sh
srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir" || exit 2
export LC_ALL=C
# shellcheck source=bench/lib.sh
. bench/lib.sh

dp_settings "randread:4k:32 seqwrite:1M:8"

altpathd=$BUILD/altpathd apbench=$BUILD/bench/ap-bench
missing=0
for p in "$altpathd" "$apbench"; do
  [ -x "$p" ] || { say "$ME: $p is missing: build it first (make, or set BUILD=dir)"; missing=1; }
done
for t in fio timeout awk /usr/bin/python3; do
  command -v "$t" >/dev/null || { say "$ME: $t is not installed (scripts/install-deps.sh installs it)"; missing=1; }
done
if command -v fio >/dev/null && ! fio --enghelp 2>/dev/null | grep -qw nbd; then
  say "$ME: this fio has no nbd engine"; missing=1
fi
((missing)) && exit 2

work=$(mktemp -d "$DP_IMAGE_DIR/altpath-served-bench.XXXXXX") \
  || { say "$ME: cannot make a directory in $DP_IMAGE_DIR"; exit 2; }
SPID=
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if [ -n "$SPID" ]; then
    kill -TERM "$SPID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SPID" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

img=$work/image
step "making a $SIZE image in $work"
run_tool "fio (fill)" 300 "$work/fill" -- \
  fio --name=fill --filename="$img" --size="$SIZE" --rw=write --bs=1M \
      --ioengine=psync --output-format=terse || exit 1

# ------------------------------------------------------------- altpathd
LOG=$work/altpathd.log
for _try in 1 2 3; do            # another process may take the free port
  port=$(free_port)
  cat >"$work/altpathd.conf" <<EOF
[node]
name = bench
[listen]
address = 127.0.0.1:$port
tls = off
[control]
socket = $work/control.sock
[port A]
1 = $img
EOF
  "$altpathd" --config "$work/altpathd.conf" >"$LOG" 2>&1 &
  SPID=$!
  URI="nbd://127.0.0.1:$port/BENCH%24DKA1"
  up=0
  for _ in $(seq 1 100); do
    kill -0 "$SPID" 2>/dev/null || break
    if grep -q 'ready' "$LOG"; then up=1; break; fi
    sleep 0.1
  done
  ((up)) && break
  if kill -0 "$SPID" 2>/dev/null; then
    tool_failed altpathd 124 "$LOG" "not ready within 10 s"
    exit 1
  fi
  wait "$SPID" 2>/dev/null; SPID=
  grep -qi -e 'in use' -e 'bind' "$LOG" && continue
  tool_failed altpathd 1 "$LOG" "exited at start"
  exit 1
done
[ -n "$SPID" ] || { tool_failed altpathd 1 "$LOG" "could not bind a port in 3 tries"; exit 1; }

# ---------------------------------------------------------- measurements
limit=$(awk -v s="$DP_SECONDS" -v r="$DP_RAMP" 'BEGIN { printf "%d", s + r + 60 }')
for ((run = 1; run <= RUNS; run++)); do
  for w in $DP_WORKLOADS; do
    IFS=: read -r mode bs qd <<<"$w"
    rw=$(fio_rw "$mode") || { say "$ME: unknown workload $w"; exit 2; }
    case $mode in *read) dir="read" ;; *) dir="write" ;; esac
    row="$mode $bs QD$qd"
    if ((run % 2)); then order="fio ours"; else order="ours fio"; fi
    for tool in $order; do
      out=$work/$mode.$bs.$qd.$tool.$run
      step "run $run/$RUNS $row: $tool"
      if [ "$tool" = fio ]; then
        run_tool "fio nbd" "$limit" "$out" -- \
          fio --name="$mode" --ioengine=nbd --uri="$URI" --size="$SIZE" \
              --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 \
              --time_based --runtime="$(fio_ms "$DP_SECONDS")" --ramp_time="$(fio_ms "$DP_RAMP")" \
              --norandommap --randrepeat=0 --lat_percentiles=1 \
              --output-format=terse --terse-version=3 \
          && { record_io served "$row" "fio nbd engine" peer "$run" "$(parse_fio "$out" "$dir")" "$bs" \
               || tool_failed "fio nbd" 1 "$out" "no terse output"; }
      else
        run_tool "ap-bench --uri" "$limit" "$out" -- \
          "$apbench" --uri "$URI" --connections 1 --size "$SIZE" --mode "$mode" \
              --bs "$bs" --qd "$qd" --seconds "$DP_SECONDS" --ramp "$DP_RAMP" --kv \
          && { record_io served "$row" "unit, served path" ours "$run" "$(parse_apbench "$out")" "$bs" \
               || tool_failed "ap-bench --uri" 1 "$out" "no figures"; }
      fi
    done
    kill -0 "$SPID" 2>/dev/null || { tool_failed altpathd 1 "$LOG" "altpathd died during the runs"; SPID=; exit 1; }
  done
done

stop_pid "$SPID" altpathd "$LOG"; rc=$?
SPID=
[ "$rc" = 0 ] || [ "$rc" = 124 ] || tool_failed altpathd "$rc" "$LOG" "exited with status $rc on SIGTERM"
if grep -v -e '^altpathd: info:' -e '^altpath: info:' "$LOG" | grep -q .; then
  say "$ME: altpathd logged, beyond its info lines:"
  grep -v -e '^altpathd: info:' -e '^altpath: info:' "$LOG" | sort | uniq -c | head -n 20 >&2
fi
((failed)) && exit 1
exit 0
