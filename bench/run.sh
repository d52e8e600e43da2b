#!/usr/bin/env bash
# run.sh — every benchmark in bench/, each against its peers measured side
# by side in the same run, assembled into one report with plots:
# REPORT_DIR/REPORT.md (bench/report/REPORT.md; with QUICK=1
# bench/report/quick/REPORT.md, so the smoke test never overwrites the
# full report).  `make bench` calls it; it can also be run by hand.
#
#   bench/run.sh                 the full run, under 15 minutes
#   QUICK=1 bench/run.sh         1 run of each comparison on a subset of
#                                the workloads, under 3 minutes (CI)
#
# 1. Data path, unit: a 1 GiB image in IMAGE_DIR (/tmp: a real disk) filled
#    by fio; per workload, fio --ioengine=io_uring --direct=1 and ap-bench
#    (one unit over one direct path) on the same file, with the same block
#    size and queue depth, alternating which goes first.
# 2. Failover: failover-pause (EIO and hang on the active path) under
#    random reads and random writes → REPORT_DIR/failover-pause.md.
# 3. Data path, NBD server: bench/nbd-server.sh (altpathd against nbdkit
#    and qemu-nbd, nbdcopy and fio's nbd engine, TCP / Unix / TLS-PSK;
#    its detailed report with the memory table → REPORT_DIR/nbd-server.md).
# 4. Data path, served path: bench/datapath-served.sh (a unit over a served
#    path against fio's nbd engine, both on the same altpathd).
# 5. Data path, device file: bench/datapath-fuse.sh (altpathd's FUSE
#    device file against nbdfuse over nbdkit, fio on both).
# 6. bench/timeline.sh and bench/scale.sh, when present (each writes its
#    own Markdown fragment and PNGs into REPORT_DIR; 77 = skipped).
# 7. bench/report.py: REPORT.md (machine, summary of ratios, the tables,
#    the plots, failover, the fragments, how to rerun) and the PNGs
#    (gnuplot), from REPORT_DIR/results.tsv (every measurement, one line
#    each: bench/lib.sh) and the fragments.
#
# Workloads everywhere (issue 6): sequential 1 MiB reads and writes at
# queue depth 8, 4 KiB random reads and writes at queue depths 1 and 32.
#
# Exit status: 0 when every tool ran, whether or not a goal was met
# (benchmarks report figures, they do not fail CI); 1 when a tool failed,
# crashed or hung (its log is printed and the report says which); 2 when
# something needed is missing.  A part that is skipped (77: not root, no
# /dev/fuse...) is noted in the report and does not fail the run.
#
# Environment:
#   BUILD=dir        where the programs are (default build; `make bench`
#                    passes an absolute path)
#   QUICK=1          1 run, short measurements, fewer workloads (what each
#                    part skips is listed in REPORT.md)
#   RUNS=n           runs per tool and workload, every part (default 3)
#   BENCH_SECONDS=s  unit: measured seconds per run (default 1.5; QUICK 0.7)
#   RAMP=s           unit: warm-up, both tools (default 0.3; QUICK 0.2)
#   REPS=n           failover-pause runs per scenario (default 5; QUICK 1)
#   SIZE=size        the unit's image (default 1G; QUICK 256M)
#   IMAGE_DIR=dir    where it goes (default /tmp; O_DIRECT must work)
#   WORKLOADS="..."  unit: NAME:BS:QD list, NAME one of randread randwrite
#                    seqread seqwrite
#   REPORT_DIR=dir   default bench/report (QUICK: bench/report/quick)
#   NBD=0 SERVED=0 FUSE=0 FAILOVER=0 TIMELINE=0 SCALE=0   skip a part
#   (nbd-server.sh's NBD_* and the datapath scripts' DP_* variables pass
#   through; each script describes them at its top)
set -uo pipefail

ME=run.sh
srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir" || exit 2
export LC_ALL=C
# shellcheck source=bench/lib.sh
. bench/lib.sh

t_start=$SECONDS
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$srcdir/$BUILD ;; esac
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-1} BENCH_SECONDS=${BENCH_SECONDS:-0.7} RAMP=${RAMP:-0.2}
  REPS=${REPS:-1} SIZE=${SIZE:-256M}
  WORKLOADS=${WORKLOADS:-"randread:4k:32 seqwrite:1M:8"}
  REPORT_DIR=${REPORT_DIR:-bench/report/quick}
fi
RUNS=${RUNS:-3}
BENCH_SECONDS=${BENCH_SECONDS:-1.5}
RAMP=${RAMP:-0.3}
REPS=${REPS:-5}
SIZE=${SIZE:-1G}
IMAGE_DIR=${IMAGE_DIR:-/tmp}
WORKLOADS=${WORKLOADS:-"seqread:1M:8 seqwrite:1M:8 randread:4k:1 randread:4k:32 randwrite:4k:1 randwrite:4k:32"}
REPORT_DIR=${REPORT_DIR:-bench/report}
case $REPORT_DIR in /*) ;; *) REPORT_DIR=$srcdir/$REPORT_DIR ;; esac
export BUILD QUICK RUNS

apbench=$BUILD/bench/ap-bench
failover=$BUILD/bench/failover-pause

missing=0
for p in "$apbench" "$failover"; do
  [ -x "$p" ] || { say "run.sh: $p is missing: build it first (make, or set BUILD=dir)"; missing=1; }
done
for t in fio timeout awk sort gnuplot /usr/bin/python3; do
  command -v "$t" >/dev/null || { say "run.sh: $t is not installed (scripts/install-deps.sh installs it)"; missing=1; }
done
if command -v gnuplot >/dev/null && ! gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
  say "run.sh: this gnuplot has no pngcairo terminal (install gnuplot-nox)"; missing=1
fi
((missing)) && exit 2

mkdir -p "$REPORT_DIR" || { say "run.sh: cannot make $REPORT_DIR"; exit 2; }
# The quick report is a smoke test, not figures to keep: out of git.
[ "$QUICK" = 1 ] && [ ! -e "$REPORT_DIR/.gitignore" ] && printf '*\n' >"$REPORT_DIR/.gitignore"
# A fresh start: nothing from an earlier run may end up in this report.
# Only the files this run writes (REPORT_DIR may be a directory of the
# user's): ours, report.py's, and the fragments' (NAME.md, NAME*.png).
( cd "$REPORT_DIR" && rm -f REPORT.md failover-pause.md nbd-server.md results.tsv parts.tsv \
      problems.txt ratios.png throughput-*.png ./*.dat ./*.gp timeline.md timeline*.png \
      scale.md scale*.png )
RESULTS=$REPORT_DIR/results.tsv PROBLEMS=$REPORT_DIR/problems.txt
: >"$RESULTS"; : >"$PROBLEMS"
PARTS=$REPORT_DIR/parts.tsv     # part  status  seconds  note
: >"$PARTS"
export RESULTS PROBLEMS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DATE_START=$(date -u '+%Y-%m-%d %H:%M UTC')

work=$(mktemp -d "$IMAGE_DIR/altpath-bench.XXXXXX") || { say "run.sh: cannot make a directory in $IMAGE_DIR"; exit 2; }
# shellcheck disable=SC2317  # called by the trap
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
# A child script traps INT itself and cleans up; we only stop.
trap 'exit 130' INT TERM
img=$work/image

# part NAME STATUS SECONDS NOTE: one line of REPORT.md's "what ran" table.
part() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$PARTS"; }

# ---------------------------------------------------------- unit vs fio
t0=$SECONDS
step "making a $SIZE image in $work and filling it"
if ! run_tool "fio (fill)" 600 "$work/fill" -- \
       fio --name=fill --filename="$img" --size="$SIZE" --rw=write --bs=1M \
           --iodepth=8 --ioengine=io_uring --direct=1 --output-format=terse; then
  exit 1
fi
sync

limit=$(awk -v s="$BENCH_SECONDS" -v r="$RAMP" 'BEGIN { printf "%d", s + r + 60 }')
f0=$failed
for ((run = 1; run <= RUNS; run++)); do
  for w in $WORKLOADS; do
    IFS=: read -r mode bs qd <<<"$w"
    rw=$(fio_rw "$mode") || { say "run.sh: unknown workload $w"; exit 2; }
    case $mode in *read) dir="read" ;; *) dir="write" ;; esac
    row="$mode $bs QD$qd"
    if ((run % 2)); then order="fio ours"; else order="ours fio"; fi
    for tool in $order; do
      out=$work/$mode.$bs.$qd.$tool.$run
      step "unit: run $run/$RUNS $row: $tool"
      if [ "$tool" = fio ]; then
        run_tool fio "$limit" "$out" -- \
          fio --name="$mode" --filename="$img" --size="$SIZE" --rw="$rw" \
              --bs="$bs" --iodepth="$qd" --ioengine=io_uring --direct=1 \
              --numjobs=1 --time_based --runtime="$(fio_ms "$BENCH_SECONDS")" \
              --ramp_time="$(fio_ms "$RAMP")" \
              --norandommap --randrepeat=0 --lat_percentiles=1 \
              --output-format=terse --terse-version=3 \
          && { record_io unit "$row" "fio io_uring" peer "$run" "$(parse_fio "$out" "$dir")" "$bs" \
               || tool_failed fio 1 "$out" "no terse output"; }
      else
        run_tool ap-bench "$limit" "$out" -- \
          "$apbench" --file "$img" --size "$SIZE" --mode "$mode" --bs "$bs" \
              --qd "$qd" --seconds "$BENCH_SECONDS" --ramp "$RAMP" --kv \
          && { record_io unit "$row" "unit, direct path" ours "$run" "$(parse_apbench "$out")" "$bs" \
               || tool_failed ap-bench 1 "$out" "no figures"; }
      fi
    done
  done
done
part unit "$([ "$failed" = "$f0" ] && echo ok || echo failed)" $((SECONDS - t0)) \
  "$RUNS run(s) × $BENCH_SECONDS s after $RAMP s; workloads $WORKLOADS"

# --------------------------------------------------------------- failover
if [ "${FAILOVER:-1}" != 0 ]; then
  t0=$SECONDS f0=$failed
  fo_limit=$((REPS * 2 * 10 + 120))
  fo_md=$REPORT_DIR/failover-pause.md
  : >"$fo_md"
  for rw in read write; do
    step "failover-pause, random ${rw}s, $REPS runs per scenario"
    fo_out=$work/failover-$rw
    if run_tool failover-pause "$fo_limit" "$fo_out" -- \
         "$failover" --file "$img" --reps "$REPS" --rw "$rw"; then
      cat "$fo_out" >>"$fo_md"
      # The library logs each switch (info) and each injected failure
      # (warning); anything else it or failover-pause said goes in.
      if grep -v -e '^altpath: info:' -e 'path fault-[ab] failed:' \
           "$fo_out.err" >"$fo_out.msg" && [ -s "$fo_out.msg" ]; then
        { echo; echo "Unexpected messages from failover-pause --rw $rw and the library:"
          echo; echo '```'; cat "$fo_out.msg"; echo '```'; echo; } >>"$fo_md"
      fi
    else
      { echo "failover-pause --rw $rw failed; its output and errors:"; echo
        echo '```'; cat "$fo_out" "$fo_out.err" 2>/dev/null | tail -n 40; echo '```'; echo; } >>"$fo_md"
    fi
  done
  part failover-pause "$([ "$failed" = "$f0" ] && echo ok || echo failed)" $((SECONDS - t0)) \
    "$REPS run(s) per scenario"
else
  part failover-pause skipped 0 "FAILOVER=0"
fi
rm -f "$img"                    # the unit image is done with

# ------------------------------------------------- the other scripts
# sub NAME VAR SCRIPT [ENV...]: run bench/SCRIPT unless VAR=0 or it is
# absent; its status goes into PARTS (77 = skipped, with the reason from
# its last line on stderr).
sub() {
  local name=$1 var=$2 script=$3 rc t0=$SECONDS note
  shift 3
  if [ "${!var:-1}" = 0 ]; then part "$name" skipped 0 "$var=0"; return 0; fi
  if [ ! -f "bench/$script" ]; then part "$name" skipped 0 "bench/$script does not exist yet"; return 0; fi
  step "bench/$script"
  # Its stderr both to ours and to a file (for the reason of a skip or a
  # failure); a pipeline, so that tee has finished when we read the file.
  { env "$@" REPORT_DIR="$REPORT_DIR" bash "bench/$script" 2>&1 1>&3 3>&- \
      | tee "$work/$name.err" >&2; } 3>&1
  rc=${PIPESTATUS[0]}
  note=$(grep -v '^[[:space:]]*$' "$work/$name.err" 2>/dev/null | tail -n 1)
  note=${note#"$script: "}
  case $rc in
    0) part "$name" ok $((SECONDS - t0)) "" ;;
    77) part "$name" skipped $((SECONDS - t0)) "skipped: ${note#skipped: }" ;;
    2) part "$name" missing $((SECONDS - t0)) "${note:-something it needs is missing}"
       missing=1 ;;
    *) part "$name" failed $((SECONDS - t0)) "exit $rc: $note"
       failed=1
       printf '%s\n' "bench/$script exited $rc: $note" >>"$PROBLEMS" ;;
  esac
}

sub nbd-server NBD nbd-server.sh NBD_REPORT="$REPORT_DIR/nbd-server.md"
sub served SERVED datapath-served.sh
sub fuse FUSE datapath-fuse.sh
sub timeline TIMELINE timeline.sh
sub scale SCALE scale.sh

# ----------------------------------------------------------------- report
step "writing $REPORT_DIR/REPORT.md"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
if ! BUILD=$BUILD QUICK=$QUICK LOAD_START=$LOAD_START LOAD_END=$LOAD_END \
     DATE_START=$DATE_START TOTAL_SECONDS=$((SECONDS - t_start)) \
     IMAGE_DIR=$IMAGE_DIR SIZE=$SIZE RUNS=$RUNS BENCH_SECONDS=$BENCH_SECONDS RAMP=$RAMP \
     /usr/bin/python3 bench/report.py "$REPORT_DIR"; then
  say "run.sh: bench/report.py failed: no report"
  exit 1
fi
say "run.sh: report written to $REPORT_DIR/REPORT.md in $((SECONDS - t_start)) s"

if ((failed)); then
  say "run.sh: a tool failed (see above and the report's Problems section); the figures are incomplete"
  exit 1
fi
((missing)) && exit 2
exit 0
