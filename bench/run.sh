#!/usr/bin/env bash
# run.sh — altpath's benchmarks, each against a peer measured in the same
# run.  `make bench` calls it; it can also be run by hand from anywhere.
#
#   bench/run.sh                 3 runs of 10 s per tool and workload
#   QUICK=1 bench/run.sh         1 run of 3 s (a smoke test of the figures)
#
# 1. Makes a 1 GiB image in /tmp and fills it (fio, sequential 1 MiB
#    direct writes), so that reads hit real blocks.
# 2. Throughput: for each workload, fio (--ioengine=io_uring --direct=1)
#    and ap-bench (one altpath unit over one direct path) on the same file
#    with the same block size and queue depth, alternating which goes first
#    from run to run.  The figure that counts is ours/fio in IOPS, the
#    median of the per-run ratios; goal ≥ 0.95.
# 3. Failover: failover-pause (EIO and hang on the active path), under
#    random reads and then random writes (where the overlap column is
#    DESIGN.md invariant 1).
# 4. Writes everything to bench/report/unit.md (with a description of the
#    machine) and prints it.
# 5. Runs bench/nbd-server.sh: altpathd's NBD server against nbdkit and
#    qemu-nbd (its own report, bench/report/nbd-server.md; NBD=0 skips it).
#
# Exit status: 0 when every tool ran, whether or not a goal was met
# (benchmarks report figures, they do not fail CI); 1 when a tool failed,
# crashed or hung (its log is printed); 2 when something needed is missing.
#
# Environment:
#   BUILD=dir        where the programs are (default build; `make bench`
#                    passes an absolute path); ap-bench and failover-pause
#                    are taken from BUILD/bench/
#   QUICK=1          RUNS=1 BENCH_SECONDS=3 RAMP=0.5 REPS=3
#   RUNS=n           runs per tool and workload (default 3)
#   BENCH_SECONDS=s  measured seconds per run (default 10)
#   RAMP=s           warm-up before measuring, both tools (default 1)
#   REPS=n           failover-pause runs per scenario (default 5)
#   SIZE=size        image size (default 1G)
#   IMAGE_DIR=dir    where the image goes (default /tmp; O_DIRECT must work)
#   WORKLOADS="..."  NAME:BS:QD list, NAME one of randread randwrite seqread
#                    seqwrite (default "randread:4k:32 seqwrite:1M:8")
#   REPORT=file      default bench/report/unit.md
#   NBD=0            skip bench/nbd-server.sh (its own NBD_* variables are
#                    described at its top)
set -uo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir" || exit 2

BUILD=${BUILD:-build}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-1} BENCH_SECONDS=${BENCH_SECONDS:-3} RAMP=${RAMP:-0.5}
  REPS=${REPS:-3}
fi
RUNS=${RUNS:-3}
BENCH_SECONDS=${BENCH_SECONDS:-10}
RAMP=${RAMP:-1}
REPS=${REPS:-5}
SIZE=${SIZE:-1G}
IMAGE_DIR=${IMAGE_DIR:-/tmp}
WORKLOADS=${WORKLOADS:-"randread:4k:32 seqwrite:1M:8"}
REPORT=${REPORT:-bench/report/unit.md}
GOAL_RATIO=0.95

apbench=$BUILD/bench/ap-bench
failover=$BUILD/bench/failover-pause

say() { printf '%s\n' "$*" >&2; }

missing=0
for p in "$apbench" "$failover"; do
  if [ ! -x "$p" ]; then
    say "run.sh: $p is missing: build it first (make bench-programs, or set BUILD=dir)"
    missing=1
  fi
done
for t in fio timeout awk sort; do
  command -v "$t" >/dev/null || { say "run.sh: $t is not installed (scripts/install-deps.sh installs fio)"; missing=1; }
done
((missing)) && exit 2

work=$(mktemp -d "$IMAGE_DIR/altpath-bench.XXXXXX") || exit 2
# shellcheck disable=SC2317  # called by the trap
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
img=$work/image
failed=0                        # a tool failed, crashed or hung

# run_tool NAME LIMIT_S OUT -- CMD...: run CMD under a time limit, stdout to
# OUT, stderr to OUT.err.  On failure print why with the end of its stderr
# and set failed.
run_tool() {
  local name=$1 limit=$2 out=$3 rc
  shift 4
  timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$out.err"
  rc=$?
  if [ "$rc" = 0 ]; then
    return 0
  fi
  failed=1
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "run.sh: $name did not finish within $limit s (killed): $*"
  elif [ "$rc" -gt 128 ]; then
    say "run.sh: $name died of signal $((rc - 128)): $*"
  else
    say "run.sh: $name failed (exit $rc): $*"
  fi
  tail -n 20 "$out.err" | sed 's/^/    /' >&2
  return 1
}

median() {
  (($#)) || { echo -; return; }
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          printf "%.10g\n", m }'
}

# The median for the table: whole numbers as they are, others to 0.1.
med() {
  median "$@" | awk '$1 == "-" { print; next }
    { if ($1 == int($1)) printf "%d\n", $1; else printf "%.1f\n", $1 }'
}

# ------------------------------------------------------------------ image
say "run.sh: making a $SIZE image in $work and filling it"
if ! run_tool "fio (fill)" 600 "$work/fill" -- \
       fio --name=fill --filename="$img" --size="$SIZE" --rw=write --bs=1M \
           --iodepth=8 --ioengine=io_uring --direct=1 --output-format=terse; then
  exit 1
fi
sync

# ------------------------------------------------------------- throughput
fio_rw() {
  case $1 in
    randread) echo randread ;; randwrite) echo randwrite ;;
    seqread) echo read ;; seqwrite) echo write ;;
    *) return 1 ;;
  esac
}

# fio's terse output, version 3 (fio HOWTO, "Terse output"): fields 6-46
# are the read side, 47-87 the write side; in each, +2 is IOPS, +1 KiB/s,
# +12..+31 the latency percentiles (total latency, since --lat_percentiles=1,
# in µs, as "50.000000%=643").  Prints "iops mb_s p50_us p99_us".
parse_fio() {
  awk -F';' -v dir="$2" '
    NR == 1 {
      b = dir == "read" ? 6 : 47
      iops = $(b + 2); mbs = $(b + 1) * 1024 / 1e6
      for (i = b + 12; i <= b + 31; i++) {
        split($i, kv, "%=")
        if (kv[1] + 0 == 50) p50 = kv[2]
        if (kv[1] + 0 == 99) p99 = kv[2]
      }
      printf "%.0f %.1f %s %s\n", iops, mbs, p50, p99
    }' "$1"
}

# ap-bench --kv: "key=value ..." → "iops mb_s p50_us p99_us".
parse_ours() {
  awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
         printf "%s %s %s %s\n", v["iops"], v["mb_s"], v["lat_p50_us"], v["lat_p99_us"] }' "$1"
}

limit=$(awk -v s="$BENCH_SECONDS" -v r="$RAMP" 'BEGIN { printf "%d", s + r + 60 }')
declare -A res                  # res[workload,tool,run] = "iops mb_s p50 p99"
for ((run = 1; run <= RUNS; run++)); do
  for w in $WORKLOADS; do
    IFS=: read -r mode bs qd <<<"$w"
    rw=$(fio_rw "$mode") || { say "run.sh: unknown workload $w"; exit 2; }
    case $mode in *read) dir="read" ;; *) dir="write" ;; esac
    if ((run % 2)); then order="fio ours"; else order="ours fio"; fi
    for tool in $order; do
      out=$work/$mode.$tool.$run
      say "run.sh: run $run/$RUNS $mode bs=$bs qd=$qd: $tool"
      if [ "$tool" = fio ]; then
        run_tool fio "$limit" "$out" -- \
          fio --name="$mode" --filename="$img" --size="$SIZE" --rw="$rw" \
              --bs="$bs" --iodepth="$qd" --ioengine=io_uring --direct=1 \
              --numjobs=1 --time_based --runtime="$BENCH_SECONDS" \
              --ramp_time="$(awk -v r="$RAMP" 'BEGIN { printf "%dms", r * 1000 }')" \
              --norandommap --randrepeat=0 --lat_percentiles=1 \
              --output-format=terse --terse-version=3 \
          && res[$w,fio,$run]=$(parse_fio "$out" "$dir")
      else
        run_tool ap-bench "$limit" "$out" -- \
          "$apbench" --file "$img" --size "$SIZE" --mode "$mode" --bs "$bs" \
              --qd "$qd" --seconds "$BENCH_SECONDS" --ramp "$RAMP" --kv \
          && res[$w,ours,$run]=$(parse_ours "$out")
      fi
    done
  done
done

# --------------------------------------------------------------- failover
fo_limit=$((REPS * 2 * 10 + 120))
declare -A fo_ok
for rw in read write; do
  say "run.sh: failover-pause, random ${rw}s, $REPS runs per scenario"
  if run_tool failover-pause "$fo_limit" "$work/failover-$rw" -- \
       "$failover" --file "$img" --reps "$REPS" --rw "$rw"; then
    fo_ok[$rw]=1
  else
    fo_ok[$rw]=0
  fi
done

# ----------------------------------------------------------------- report
mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
fs=$(df -T "$IMAGE_DIR" 2>/dev/null | awk 'NR == 2 { print $2 " on " $1 }')
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
dirty=$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo " (with uncommitted changes)")

{
  echo "# altpath benchmarks: unit over a direct path, against fio"
  echo
  echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), source $rev$dirty."
  echo "Figures from one machine; compare ratios, not absolute numbers, across machines."
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPUs (nproc) | $(nproc) × $cpu |"
  echo "| memory | $mem |"
  echo "| kernel | $(uname -r) |"
  echo "| fio | $(fio --version) |"
  echo "| image | $SIZE file in $IMAGE_DIR ($fs), filled by fio before the runs |"
  echo
  echo "## Throughput: ap-bench (one unit, one direct path) against fio"
  echo
  echo "Both: io_uring, O_DIRECT, one job/thread, the same file, block size and"
  echo "queue depth; random offsets uniform over the whole image (fio"
  echo "\`--norandommap\`).  $RUNS run(s) of $BENCH_SECONDS s after $RAMP s of"
  echo "warm-up per tool and workload, alternating which tool goes first."
  echo "Latency is submit → completion (fio's \`lat\`, not \`clat\`), in µs."
  echo "Absolute figures are medians over the runs; the ratio is the median of"
  echo "the per-run ratios ours/fio in IOPS.  Goal: ratio ≥ $GOAL_RATIO."
  echo
  echo "| workload | fio IOPS | fio MB/s | fio p50/p99 µs | ours IOPS | ours MB/s | ours p50/p99 µs | ours/fio | per-run range | goal | |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for w in $WORKLOADS; do
    IFS=: read -r mode bs qd <<<"$w"
    declare -a fi_=() fm=() f5=() f9=() oi=() om=() o5=() o9=() ratio=()
    for ((run = 1; run <= RUNS; run++)); do
      f=${res[$w,fio,$run]:-}
      o=${res[$w,ours,$run]:-}
      if [ -n "$f" ]; then
        read -r a b c d <<<"$f"; fi_+=("$a"); fm+=("$b"); f5+=("$c"); f9+=("$d")
      fi
      if [ -n "$o" ]; then
        read -r a b c d <<<"$o"; oi+=("$a"); om+=("$b"); o5+=("$c"); o9+=("$d")
      fi
      if [ -n "$f" ] && [ -n "$o" ]; then
        ratio+=("$(awk -v o="${o%% *}" -v f="${f%% *}" 'BEGIN { if (f > 0) printf "%.3f", o / f; else print 0 }')")
      fi
    done
    if ((${#ratio[@]})); then
      r=$(median "${ratio[@]}")
      verdict=$(awk -v r="$r" -v g="$GOAL_RATIO" 'BEGIN { print (r >= g) ? "met" : "**missed**" }')
      r=$(printf '%.3f' "$r")
      range=$(printf '%s\n' "${ratio[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }')
    else
      r="n/a"; range="n/a"; verdict="tool failed"
    fi
    printf '| %s %s QD%s | %s | %s | %s / %s | %s | %s | %s / %s | %s | %s | ≥ %s | %s |\n' \
      "$mode" "$bs" "$qd" \
      "$(med "${fi_[@]}")" "$(med "${fm[@]}")" "$(med "${f5[@]}")" "$(med "${f9[@]}")" \
      "$(med "${oi[@]}")" "$(med "${om[@]}")" "$(med "${o5[@]}")" "$(med "${o9[@]}")" \
      "$r" "$range" "$GOAL_RATIO" "$verdict"
    unset fi_ fm f5 f9 oi om o5 o9 ratio
  done
  echo
  echo "<details><summary>Every run (IOPS, MB/s, p50 µs, p99 µs)</summary>"
  echo
  echo "| workload | run | fio | ours | ours/fio |"
  echo "|---|---|---|---|---|"
  for w in $WORKLOADS; do
    for ((run = 1; run <= RUNS; run++)); do
      f=${res[$w,fio,$run]:-failed}
      o=${res[$w,ours,$run]:-failed}
      r=$(awk -v o="${o%% *}" -v f="${f%% *}" 'BEGIN { if (f + 0 > 0 && o + 0 > 0) printf "%.3f", o / f; else print "-" }')
      echo "| $w | $run | $f | $o | $r |"
    done
  done
  echo
  echo "</details>"
  echo
  echo "## Failover pause (failover-pause)"
  echo
  echo "Two direct paths to the image, each behind the fault-injecting wrapper;"
  echo "the active one is failed after a warm-up.  The pause is the longest"
  echo "time the caller saw no completion, from the fault until its first"
  echo "completion once the other path served a request (bench/README.md)."
  echo
  for rw in read write; do
    fo_out=$work/failover-$rw
    if ((fo_ok[$rw])); then
      cat "$fo_out"
    else
      echo "failover-pause --rw $rw failed; its output and errors:"
      echo
      echo '```'
      cat "$fo_out" "$fo_out.err" 2>/dev/null
      echo '```'
      echo
    fi
    # The library logs each switch (info) and each injected failure
    # (warning); anything else it or failover-pause said goes in the
    # report.
    if ((fo_ok[$rw])) && grep -v -e '^altpath: info:' -e 'path fault-[ab] failed:' \
         "$fo_out.err" >"$fo_out.msg" && [ -s "$fo_out.msg" ]; then
      echo "Unexpected messages from failover-pause --rw $rw and the library:"
      echo
      echo '```'
      cat "$fo_out.msg"
      echo '```'
      echo
    fi
  done
} >"$work/report.md"

mkdir -p "$(dirname "$REPORT")"
cp "$work/report.md" "$REPORT"
cat "$REPORT"
say "run.sh: report written to $REPORT"

# ------------------------------------------------------------- NBD server
# altpathd's NBD server against nbdkit and qemu-nbd: bench/nbd-server.sh,
# with its own report (bench/report/nbd-server.md).  QUICK, RUNS and SIZE
# pass through the environment; NBD=0 skips it.
nbd_rc=0
if [ "${NBD:-1}" != 0 ]; then
  rm -f "$img"                  # the unit image is done with
  say "run.sh: bench/nbd-server.sh (altpathd against nbdkit and qemu-nbd)"
  BUILD=$BUILD QUICK=$QUICK bash bench/nbd-server.sh
  nbd_rc=$?
fi

if ((failed)) || [ "$nbd_rc" = 1 ] || [ "$nbd_rc" -gt 2 ]; then
  say "run.sh: a tool failed (see above); the figures are incomplete"
  exit 1
fi
[ "$nbd_rc" = 2 ] && exit 2
exit 0
