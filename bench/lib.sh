# shellcheck shell=bash
# bench/lib.sh — shell helpers the data-path benchmarks share (sourced by
# bench/run.sh, bench/nbd-server.sh, bench/datapath-served.sh and
# bench/datapath-fuse.sh; not run on its own).
#
# The one thing every data-path script has in common is where its figures
# go: one line per measurement appended to RESULTS (a TSV file), which
# bench/report.py turns into REPORT.md's tables and plots:
#
#   section  row  tool  role  run  value  unit  p50_us  p99_us
#
#   section  unit | nbd | served | fuse (one comparison each)
#   row      the workload (and transport), e.g. "randread 4k QD32"
#   tool     who was measured, e.g. "fio io_uring", "altpathd"
#   role     ours | peer: the ratio of a row is ours / the best peer of
#            the same run
#   value    IOPS for 4 KiB rows, MB/s (10^6 bytes) for 1 MiB rows
#   unit     IOPS | MB/s
#   p50_us, p99_us  latency percentiles (submit to completion) or "-"
#
# Callers set ME (their name, for messages) and may read `failed`.

failed=${failed:-0}
problems=()

# dp_settings QUICK_WORKLOADS: the settings of datapath-served.sh and
# datapath-fuse.sh (documented at their tops), QUICK=1 giving one short
# run of QUICK_WORKLOADS.
dp_settings() {
  BUILD=${BUILD:-build}
  QUICK=${QUICK:-0}
  if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-1} DP_SECONDS=${DP_SECONDS:-0.7} DP_RAMP=${DP_RAMP:-0.2}
    SIZE=${SIZE:-128M} DP_WORKLOADS=${DP_WORKLOADS:-$1}
  fi
  RUNS=${RUNS:-3}
  DP_SECONDS=${DP_SECONDS:-1}
  DP_RAMP=${DP_RAMP:-0.25}
  SIZE=${SIZE:-512M}
  DP_IMAGE_DIR=${DP_IMAGE_DIR:-/dev/shm}
  DP_WORKLOADS=${DP_WORKLOADS:-"seqread:1M:8 seqwrite:1M:8 randread:4k:1 randread:4k:32 randwrite:4k:1 randwrite:4k:32"}
}

say() { printf '%s\n' "$*" >&2; }
step() { printf '%s: [%3ds] %s\n' "$ME" "$SECONDS" "$*" >&2; }

# record SECTION ROW TOOL ROLE RUN VALUE UNIT P50 P99
record() {
  [ -n "${RESULTS:-}" ] || return 0
  local IFS=$'\t'
  printf '%s\n' "$*" >>"$RESULTS"
}

# tool_failed NAME RC ERRFILE CMD: say why NAME failed, with the end of its
# stderr; set failed.
tool_failed() {
  local name=$1 rc=$2 msg
  failed=1
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    msg="$name did not finish in time (killed): $4"
  elif [ "$rc" -gt 128 ]; then
    msg="$name died of signal $((rc - 128)): $4"
  else
    msg="$name failed (exit $rc): $4"
  fi
  say "$ME: $msg"
  tail -n 20 "$3" 2>/dev/null | sed 's/^/    /' >&2
  problems+=("$msg")
  if [ -n "${PROBLEMS:-}" ]; then printf '%s\n' "$ME: $msg" >>"$PROBLEMS"; fi
}

# run_tool NAME LIMIT_S OUT -- CMD...: CMD under a time limit, stdout to
# OUT, stderr to OUT.err; on failure say why and return 1.
run_tool() {
  local name=$1 limit=$2 out=$3 rc
  shift 4
  timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$out.err"
  rc=$?
  [ "$rc" = 0 ] && return 0
  tool_failed "$name" "$rc" "$out.err" "$*"
  return 1
}

# fio's terse output, version 3 (fio HOWTO, "Terse output"): fields 6-46
# are the read side, 47-87 the write side; in each, +2 is IOPS, +1 KiB/s,
# +12..+31 the latency percentiles (total latency with --lat_percentiles=1,
# in µs, as "50.000000%=643").  parse_fio FILE read|write prints
# "iops mb_s p50_us p99_us".
parse_fio() {
  awk -F';' -v dir="$2" '
    $1 == 3 {
      b = dir == "read" ? 6 : 47
      iops = $(b + 2); mbs = $(b + 1) * 1024 / 1e6
      p50 = "-"; p99 = "-"
      for (i = b + 12; i <= b + 31; i++) {
        split($i, kv, "%=")
        if (kv[1] + 0 == 50) p50 = kv[2]
        if (kv[1] + 0 == 99) p99 = kv[2]
      }
      printf "%.0f %.1f %s %s\n", iops, mbs, p50, p99
      exit
    }' "$1"
}

# ap-bench --kv: "key=value ..." → "iops mb_s p50_us p99_us".
parse_apbench() {
  awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
         if (v["iops"] != "")
           printf "%s %s %s %s\n", v["iops"], v["mb_s"], v["lat_p50_us"], v["lat_p99_us"] }' "$1"
}

# record_io SECTION ROW TOOL ROLE RUN "iops mb_s p50 p99" BS: one result,
# IOPS for small blocks and MB/s for 1 MiB ones.
record_io() {
  local iops mbs p50 p99
  read -r iops mbs p50 p99 <<<"$6"
  [ -n "${iops:-}" ] || return 1
  case $7 in
    4k|4K|4096) record "$1" "$2" "$3" "$4" "$5" "$iops" IOPS "$p50" "$p99" ;;
    *) record "$1" "$2" "$3" "$4" "$5" "$mbs" MB/s "$p50" "$p99" ;;
  esac
}

# fio --rw for a workload name.
fio_rw() {
  case $1 in
    randread) echo randread ;; randwrite) echo randwrite ;;
    seqread) echo read ;; seqwrite) echo write ;;
    *) return 1 ;;
  esac
}

# Seconds (fractions allowed) → fio's "NNNms".
fio_ms() { awk -v r="$1" 'BEGIN { printf "%dms", r * 1000 }'; }

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# stop_pid PID NAME LOG: SIGTERM, wait up to 10 s, then SIGKILL; returns
# the exit status (124 when it had to be killed).
stop_pid() {
  local pid=$1 rc
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    tool_failed "$2" 124 "$3" "did not stop within 10 s of SIGTERM"
    return 124
  fi
  wait "$pid"; rc=$?
  return "$rc"
}
