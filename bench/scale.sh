#!/usr/bin/env bash
# scale.sh — how altpath's cluster scales with the number of disks
# (issue 6): three altpathd nodes on this host, for N disks each:
#
#   A ─┐ port B, alloclass 4: a "bus" directory of N sparse images in
#   B ─┘ /dev/shm; each reaches every disk directly (and served by the other)
#   C    attached to nothing: reaches every disk served by A and by B
#
# The nodes use the dir registry and loopback TCP (ports 11201-11203), so
# no network namespace is needed.  For each N:
#
# 1. convergence: A and B are started together; the clock runs until both
#    list (altpath show devices --json, through their control sockets,
#    polled every 100 ms by bench/scale-wait.py) all N units online, each
#    with exactly the paths direct + served:<other> and on direct.  Then C
#    is started, and its clock runs until it lists all N units online with
#    exactly served:A + served:B.  C is started last so that A's memory
#    before and after tells what serving C costs.
# 2. memory: VmRSS, Threads and open file descriptors of every node (from
#    /proc/PID/status and /proc/PID/fd) after A and B converged and after
#    C did, and the NBD connections A and B accept (ss).  Derived: per unit
#    (the slope of RSS between the two largest N) and per NBD connection on
#    the serving side (A's growth when C connects, over the connections C
#    opened to A).
# 3. hot-add: one more image dropped into the bus directory; the clock runs
#    until all three nodes have it as a unit, online, with its paths.
# 4. stop: SIGTERM to all three; the time until they have all exited.
#
# Before each N, what it needs is checked: the NBD connections A must
# accept (4 N) against altpathd's NBD_MAX_CONNS, and the threads of the
# three nodes (extrapolated from the last N) against what this host's
# kernel.pid_max leaves free, since exhausting it would break every other
# process on the machine.  An N that does not fit is replaced by the
# largest multiple of 50 that does; then, if the largest N asked for was
# not run, it is run in a reduced topology (A and C only, C with one
# connection per served path: A accepts N connections), rows marked "p".
#
# Writes REPORT_DIR/scale.md (a Markdown fragment starting "## Scale") and
# REPORT_DIR/scale.png (convergence time and RSS against N, gnuplot), and
# prints the fragment.
#
# Environment:
#   BUILD=dir        where altpathd and altpath are (default build)
#   QUICK=1          only N = 10 and 100: 15-35 s (default N = 10, 100 and
#                    1000: 75-100 s, measured on a busy 2-core machine)
#   SCALE_NS="..."   the disk counts to run (overrides QUICK)
#   REPORT_DIR=dir   where scale.md and scale.png go (default bench/report)
#   SCALE_BOUND=s    convergence bound per step, seconds (default 20 + N/10
#                    for A and B, the same again for C); hot-add: 15 s
#   DISK_SIZE=size   each image (sparse; default 4M)
#   SCALE_KEEP=1     keep the temporary directory (configurations, the
#                    nodes' logs) in /dev/shm, to look at a failure
#
# Needs no root.  Exit status: 0 every N that was run converged within its
# bound (an N not run because it does not fit is not a failure: the report
# says why); 1 a node failed to
# start, crashed, or did not converge within the bound (the report is still
# written, saying where it stopped, and the nodes' logs are printed); 2
# something needed is missing; 77 skipped (the reason on the last stderr
# line).
set -uo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$srcdir/$BUILD ;; esac
QUICK=${QUICK:-0}
REPORT_DIR=${REPORT_DIR:-$srcdir/bench/report}
DISK_SIZE=${DISK_SIZE:-4M}
if [ -n "${SCALE_NS:-}" ]; then NS_LIST=$SCALE_NS
elif [ "$QUICK" = 1 ]; then NS_LIST="10 100"
else NS_LIST="10 100 1000"; fi
PA=11201 PB=11202 PC=11203
WAIT=$srcdir/bench/scale-wait.py

for b in altpathd altpath; do
  [ -x "$BUILD/$b" ] || { echo "scale.sh: missing $BUILD/$b: run make" >&2; exit 2; }
done
for t in python3 gnuplot ss truncate; do
  command -v "$t" > /dev/null \
    || { echo "scale.sh: needs $t (scripts/install-deps.sh)" >&2; exit 2; }
done
[ -r "$WAIT" ] || { echo "scale.sh: missing $WAIT" >&2; exit 2; }
[ -d /dev/shm ] && [ -w /dev/shm ] \
  || { echo "scale.sh: skipped: /dev/shm is not a writable directory" >&2; exit 77; }
for p in $PA $PB $PC; do
  if ss -Htln "( sport = :$p )" | grep -q .; then
    echo "scale.sh: skipped: TCP port $p is in use (this benchmark uses 11201-11203)" >&2
    exit 77
  fi
done
mkdir -p "$REPORT_DIR" \
  || { echo "scale.sh: cannot make REPORT_DIR $REPORT_DIR" >&2; exit 2; }

T=$(mktemp -d /dev/shm/ap-scale.XXXXXX) \
  || { echo "scale.sh: cannot make a directory in /dev/shm" >&2; exit 2; }
declare -A pid
wpid=
cleanup () {
  set +e
  for p in "${pid[@]}" $wpid; do kill -9 "$p" 2> /dev/null; done
  wait 2> /dev/null
  if [ "${SCALE_KEEP:-0}" = 1 ]; then
    echo "scale.sh: SCALE_KEEP=1: the nodes' files and logs are in $T" >&2
  else
    rm -rf "$T"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

START=$(date +%s.%N)
log () { printf '[%6.1f] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $START}")" "$*" >&2; }
now () { date +%s.%N; }
since () { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b - a}'; }

# conf NODE PORT ATTACHED DIR
conf () {
  cat > "$4/$1.conf" <<EOF
[node]
name = $1
[listen]
address = 127.0.0.1:$2
tls = off
[registry]
backend = dir
dir = $4/reg
lease-ms = 3000
[cluster]
local-socket = $4/$1.sock
state-file = $4/$1.state.json
devices = none
[control]
socket = $4/$1.ctl
EOF
  if [ "$3" = yes ]; then
    printf '[port B]\nalloclass = 4\nglob = %s/bus/disk*.img\n' "$4" >> "$4/$1.conf"
  fi
}

start () {
  "$BUILD/altpathd" --config "$2/$1.conf" >> "$2/$1.log" 2>&1 &
  pid[$1]=$!
}

# poll_ready [--one] BOUND NODE CTL PATHS ACTIVE ...: start
# bench/scale-wait.py on $D/devs (--one: on the one device in $D/new) and
# wait until it is ready (Python takes seconds to start on a loaded
# machine, which must not count); poll_go starts its clock (call it right
# before what is timed); poll_result waits for it, sets $out and $wrc.
poll_ready () {
  local devs=$D/devs one=
  [ "$1" = --one ] && { devs=$D/new; one=--one; shift; }
  rm -f "$D/go" "$D/out"; mkfifo "$D/go"
  python3 "$WAIT" $one "$BUILD/altpath" "$devs" "$@" < "$D/go" > "$D/out" &
  wpid=$!
  exec 8> "$D/go"
  for _ in $(seq 600); do
    grep -q '^ready' "$D/out" 2> /dev/null && return 0
    kill -0 $wpid 2> /dev/null || break
    sleep 0.05
  done
  log "bench/scale-wait.py did not start"; exec 8>&-; return 1
}
poll_go () { t0=$(now); echo "$t0" >&8; exec 8>&-; }
poll_result () {
  wait "$wpid"; wrc=$?
  out=$(grep -v '^ready' "$D/out")
  printf '%s\n' "$out" | sed 's/^/    /' >&2
}

# sample NODE: "rss_kib threads fds" of a running node
sample () {
  [ -n "${pid[$1]:-}" ] || { echo "0 0 0"; return; }
  local p=${pid[$1]} rss thr fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2> /dev/null)
  thr=$(awk '/^Threads:/ {print $2}' "/proc/$p/status" 2> /dev/null)
  fds=$(ls "/proc/$p/fd" 2> /dev/null | wc -l)
  echo "${rss:-0} ${thr:-0} $fds"
}

# accepted PORT: established NBD connections a node accepted on PORT
accepted () { ss -Htn state established "( sport = :$1 )" | wc -l; }

dump_logs () {
  for n in A B C; do
    [ -f "$1/$n.log" ] || continue
    echo "---- last lines of node $n's log ($1/$n.log)" >&2
    tail -n 15 "$1/$n.log" >&2
  done
}

alive () {
  local n
  for n in "$@"; do
    kill -0 "${pid[$n]}" 2> /dev/null || { log "node $n exited"; return 1; }
  done
}

stop_all () {
  local n t0 p
  t0=$(now)
  for n in "${!pid[@]}"; do kill -TERM "${pid[$n]}" 2> /dev/null; done
  for n in "${!pid[@]}"; do
    p=${pid[$n]}
    for _ in $(seq 300); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2> /dev/null; then
      log "node $n did not stop within 30 s of SIGTERM; killed"
      kill -9 "$p" 2> /dev/null
      STOP_OK=0
    fi
    wait "$p" 2> /dev/null
  done
  pid=()
  STOP_S=$(since "$t0")
}

# The table rows, one per N (tab-separated fields, see the report).
RESULTS=$T/results
D='' t0='' out='' wrc=0
: > "$RESULTS"
rc=0
ulimit_n="$(ulimit -Sn)/$(ulimit -Hn)"

# run_n N [pair]: one run.  "pair" is the reduced topology used when the
# full one does not fit: A (direct) and C only, C with one connection per
# served path, so that A accepts N connections, not 4 N.
run_n () {
  local N=$1 mode=${2:-full} first=1000 i bound hot
  # NODE CTL PATHS ACTIVE for bench/scale-wait.py; PATHS is a comma list.
  # shellcheck disable=SC2054
  local ab=(A "$T/n$1/A.ctl" direct,served:B direct B "$T/n$1/B.ctl" direct,served:A direct)
  # shellcheck disable=SC2054
  local cs=(C "$T/n$1/C.ctl" served:A,served:B 'served:*')
  local nodes="A B" tag=$N
  if [ "$mode" = pair ]; then
    ab=(A "$T/n$1/A.ctl" direct direct)
    cs=(C "$T/n$1/C.ctl" served:A 'served:*')
    nodes=A tag=${N}p
  fi
  D=$T/n$1
  mkdir -p "$D/bus" "$D/reg"
  bound=${SCALE_BOUND:-$((20 + N / 10))}
  # Sparse images: disk1000.img ... (unit numbers 1000 up: $4$DKB1000 ...)
  local files=()
  for ((i = 0; i < N; i++)); do files+=("$D/bus/disk$((first + i)).img"); done
  truncate -s "$DISK_SIZE" "${files[@]}" \
    || { log "cannot make $N images in $D/bus"; return 1; }
  for ((i = 0; i < N; i++)); do printf '$4$DKB%d\n' $((first + i)); done > "$D/devs"
  conf A $PA yes "$D"; conf B $PB yes "$D"; conf C $PC no "$D"
  [ "$mode" = pair ] && sed -i 's/^\[cluster\]$/[cluster]\nconnections = 1/' "$D/C.conf"

  log "N=$N: starting $nodes"
  poll_ready "$bound" "${ab[@]}" || return 1
  poll_go
  for n in $nodes; do start $n "$D"; done
  poll_result
  local tA tB bytesA
  tA=$(awk '$1 == "A" && NF == 2 {print $2}' <<< "$out")
  tB=$(awk '$1 == "B" && NF == 2 {print $2}' <<< "$out")
  [ "$mode" = pair ] && tB=-
  bytesA=$(awk '$1 == "A" && $2 == "reply_bytes" {print $3}' <<< "$out")
  if [ $wrc != 0 ] || ! alive $nodes; then
    log "N=$N: $nodes did not converge within $bound s"
    dump_logs "$D"
    printf '%s\tA/B did not converge within %s s: %s\n' "$tag" "$bound" \
      "$(grep timeout <<< "$out" | tr '\n' ' ')" >> "$RESULTS"
    stop_all; return 1
  fi
  # Let the probes and the registry settle before measuring memory.
  sleep 1
  local sA0 sB0 accA0 accB0
  sA0=$(sample A); sB0=$(sample B)
  accA0=$(accepted $PA); accB0=$(accepted $PB)

  log "N=$N: starting C"
  poll_ready "$bound" "${cs[@]}" || return 1
  poll_go
  start C "$D"
  poll_result
  local tC cliC
  tC=$(awk '$1 == "C" && NF == 2 {print $2}' <<< "$out")
  cliC=$(awk '$1 == "C" && $2 == "cli_ms" {print $3}' <<< "$out")
  if [ $wrc != 0 ] || ! alive $nodes C; then
    log "N=$N: C did not converge within $bound s"
    dump_logs "$D"
    printf '%s\tC did not converge within %s s (A %s s, B %s s): %s\n' "$tag" \
      "$bound" "$tA" "$tB" "$(grep timeout <<< "$out" | tr '\n' ' ')" >> "$RESULTS"
    stop_all; return 1
  fi
  sleep 1
  local sA sB sC accA accB
  sA=$(sample A); sB=$(sample B); sC=$(sample C)
  # Threads by name (the kernel's comm, 15 characters), for the report.
  for n in $nodes C; do
    printf '%s:' "$n"
    # io_uring workers are iou-wrk-<pid>: count them under one name.
    cat /proc/"${pid[$n]}"/task/*/comm 2> /dev/null | sed 's/-[0-9]*$//' \
      | sort | uniq -c | sort -rn \
      | awk '{c = $1; $1 = ""; printf " %s×%s", c, substr($0, 2)}'
    echo
  done > "$T/threads-$tag"
  accA=$(accepted $PA); accB=$(accepted $PB)

  log "N=$N: hot-add disk$((first + N)).img"
  printf '$4$DKB%d\n' $((first + N)) > "$D/new"
  poll_ready --one 15 "${ab[@]}" "${cs[@]}" || { stop_all; return 1; }
  poll_go
  truncate -s "$DISK_SIZE" "$D/bus/disk$((first + N)).img"
  poll_result
  # The last node to have it (the poller's clock starts at the truncate).
  hot=$(awk 'NF == 2 && $2 + 0 > m {m = $2} END {printf "%.2f", m}' <<< "$out")
  if [ $wrc != 0 ]; then
    log "N=$N: the hot-added disk is not everywhere within 15 s"
    dump_logs "$D"
    hot=">15"
    rc=1
  fi

  STOP_OK=1
  stop_all
  [ "$STOP_OK" = 1 ] || { dump_logs "$D"; rc=1; }
  log "N=$N: stopped in $STOP_S s"
  # N tA tB tC hot stop | A0 B0 (rss thr fds) | A B C | accA0 accB0 accA accB
  # | reply bytes, slowest CLI ms
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s %s %s %s\t%s %s\n' \
    "$tag" "$tA" "$tB" "$tC" "$hot" "$STOP_S" "$sA0" "$sB0" "$sA" "$sB" "$sC" \
    "$accA0" "$accB0" "$accA" "$accB" "$bytesA" "$cliC" >> "$RESULTS"
  [ "${SCALE_KEEP:-0}" = 1 ] || rm -rf "$D"
  return 0
}

# What a run of N disks needs, checked before it is started:
# - NBD connections: A accepts 2 (the `connections` default) for each disk
#   from each of B and C, 4 N in all, and altpathd's server refuses more
#   than NBD_MAX_CONNS (daemon/nbd-internal.h) at once;
# - threads: each node has threads per unit (bench/scale.md shows which),
#   and all three nodes share this host's pid space (kernel.pid_max, also
#   kernel.threads-max).  Running out would make every fork and
#   pthread_create on the machine fail, other people's too, so a run that
#   would use more than three quarters of what is free is not started.
# A run that does not fit is replaced by the largest one (a multiple of 50)
# that does, and the report says so.
max_conns=$(awk '$1 == "#define" && $2 == "NBD_MAX_CONNS" {sub(/u$/, "", $3); print $3 + 0}' \
              "$srcdir/daemon/nbd-internal.h" 2> /dev/null)
max_conns=${max_conns:-1024}
pid_room () {
  local pm tm used
  pm=$(cat /proc/sys/kernel/pid_max); tm=$(cat /proc/sys/kernel/threads-max)
  [ "$tm" -lt "$pm" ] && pm=$tm
  used=$(awk '{split($4, a, "/"); print a[2]}' /proc/loadavg)
  echo $(((pm - used) * 3 / 4))
}
NOTES=$T/notes
: > "$NOTES"
last_n=0 last_threads=0 big_n=0
for N in $NS_LIST; do
  fit=$N why=
  if [ $((4 * N)) -gt "$max_conns" ]; then
    fit=$((max_conns / 4)) why="A would have to accept $((4 * N)) NBD connections (2 per served path, from B and C), and altpathd's server takes at most $max_conns (NBD_MAX_CONNS, daemon/nbd-internal.h)"
  fi
  if [ "$last_n" -gt 0 ]; then
    room=$(pid_room)
    need=$(((last_threads * N + last_n - 1) / last_n))
    if [ "$need" -gt "$room" ]; then
      tfit=$((room * last_n / last_threads))
      [ "$tfit" -lt "$fit" ] && fit=$tfit
      why="${why:+$why; and }the three nodes would need about $need threads ($((last_threads / last_n)) per disk at $last_n disks), more than three quarters of the $((room * 4 / 3)) the host has free (kernel.pid_max $(cat /proc/sys/kernel/pid_max))"
    fi
  fi
  if [ "$fit" -lt "$N" ]; then
    fit=$((fit / 50 * 50))
    log "N=$N not run: $why"
    big_n=$N
    if [ "$fit" -gt "$last_n" ]; then
      printf 'Limit: %s disks not run: %s. Ran %s disks instead, the largest multiple of 50 that fits.\n' "$N" "$why" "$fit" >> "$NOTES"
      N=$fit
    else
      printf 'Limit: %s disks not run: %s.\n' "$N" "$why" >> "$NOTES"
      continue
    fi
  fi
  run_n "$N" || { rc=1; break; }
  last_n=$N
  last_threads=$(awk -F '\t' -v n="$N" '$1 == n {split($9, a, " "); split($10, b, " "); split($11, c, " "); print a[2] + b[2] + c[2]}' "$RESULTS")
done
# The largest N asked for did not fit: run it in the reduced topology
# (A and C, one connection per served path) if that fits, so that the
# registry, the reconciling and the control socket are still measured at N.
if [ $rc = 0 ] && [ "$big_n" -gt 0 ] && [ "$last_n" -gt 0 ]; then
  room=$(pid_room)
  # A node of the pair has about half the threads per disk of the trio.
  need=$(((last_threads * big_n / last_n) / 2))
  if [ "$big_n" -le "$max_conns" ] && [ "$need" -le "$room" ]; then
    printf 'Reduced topology: %s disks (marked p): A and C only, C with one connection per served path (`connections = 1`), so that A accepts %s connections; A has only its direct path, C only served:A.\n' "$big_n" "$big_n" >> "$NOTES"
    run_n "$big_n" pair || rc=1
  else
    printf 'Limit: %s disks not run in the reduced topology either (A and C, one connection per served path): %s connections (at most %s), about %s threads (%s free).\n' "$big_n" "$big_n" "$max_conns" "$need" "$room" >> "$NOTES"
  fi
fi

# ----------------------------------------------------------------- report
python3 - "$RESULTS" "$REPORT_DIR" "$NS_LIST" "$ulimit_n" "$DISK_SIZE" \
  "$QUICK" "$NOTES" > "$T/plot.dat" <<'EOF' || { echo "scale.sh: the report could not be written" >&2; exit 1; }
import sys
results, report_dir, ns, ulim, size, quick, notes = sys.argv[1:8]
rows, failed = [], []
for line in open(results):
    f = line.rstrip("\n").split("\t")
    if len(f) == 2:
        failed.append((f[0], f[1]))
        continue
    N = int(f[0].rstrip("p"))
    pair = f[0].endswith("p")
    A0, B0, A, B, C = ([int(x) for x in f[i].split()] for i in range(6, 11))
    accA0, accB0, accA, accB = (int(x) for x in f[11].split())
    rbytes, cli_ms = f[12].split()
    rows.append(dict(N=N, pair=pair, tag=f[0], tA=f[1], tB=f[2], tC=f[3], hot=f[4], stop=f[5],
                     A0=A0, B0=B0, A=A, B=B, C=C, accA0=accA0, accB0=accB0,
                     accA=accA, accB=accB, rbytes=int(rbytes or 0),
                     cli_ms=cli_ms))
mib = lambda kib: "%.1f" % (kib / 1024)
out = []
w = out.append
w("## Scale\n")
w("Three altpathd nodes on this host (`bench/scale.sh`): A and B attach "
  "one directory of N sparse %s images as port B (allocation class 4), "
  "so each reaches every disk directly and served by the other; C attaches "
  "nothing and reaches every disk served by A and by B (two NBD "
  "connections per served path, the `connections` default). Dir registry, "
  "loopback TCP, defaults otherwise. Disk counts asked for: %s%s. File "
  "descriptor limit of the shell that started the nodes (soft/hard): %s "
  "(altpathd raises its soft limit to the hard one).\n"
  % (size, ns, " (QUICK)" if quick == "1" else "", ulim))
w("- **A, B s**: from starting A and B until each lists all N units online "
  "on their direct path with exactly `direct` + `served:<other>` healthy "
  "(`altpath show devices --json`, polled every 100 ms).")
w("- **C s**: from starting C (once A and B converged) until it lists all N "
  "units online with exactly `served:A` + `served:B` healthy.")
w("- **hot-add s**: from dropping one more image into the bus directory "
  "until it is such a unit on all three nodes.")
w("- **stop s**: SIGTERM to all three until all have exited.")
w("- RSS, threads and fds of each node once all three converged (+1 s); "
  "**conns A** is the NBD connections A accepted (from B and C).\n")
w("| disks | A s | B s | C s | hot-add s | stop s | RSS A / B / C MiB "
  "| threads A / B / C | fds A / B / C | conns A | `show devices` reply |")
w("|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|")
for r in rows:
    w("| %s | %s | %s | %s | %s | %s | %s / %s / %s | %d / %d / %d "
      "| %d / %d / %d | %d | %.0f KiB, %s ms |"
      % (r["tag"], r["tA"], r["tB"], r["tC"], r["hot"], r["stop"],
         mib(r["A"][0]), mib(r["B"][0]), mib(r["C"][0]),
         r["A"][1], r["B"][1], r["C"][1], r["A"][2], r["B"][2], r["C"][2],
         r["accA"], r["rbytes"] / 1024, r["cli_ms"]))
for N, why in failed:
    w("| %s | did not converge: see below ||||||||||" % N)
w("")
full = [r for r in rows if not r["pair"]]
if len(full) >= 2:
    lo, hi = full[-2], full[-1]
    dn = hi["N"] - lo["N"]
    per = lambda k, i: (hi[k][i] - lo[k][i]) / dn
    w("**Per unit** (slope from %d to %d disks): A %.0f KiB, %.2f threads, "
      "%.2f fds; B %.0f KiB, %.2f threads, %.2f fds; C %.0f KiB, %.2f "
      "threads, %.2f fds. A unit on A or B has a direct and a served path "
      "and is served to two peers; on C it has two served paths."
      % (lo["N"], hi["N"], per("A", 0), per("A", 1), per("A", 2),
         per("B", 0), per("B", 1), per("B", 2),
         per("C", 0), per("C", 1), per("C", 2)))
    w("")
for r in rows[-2:] if rows and rows[-1]["pair"] else rows[-1:]:
    dc = r["accA"] - r["accA0"]
    if dc > 0:
        w("**Per NBD connection, serving side** (at %s disks, A before and "
          "after C connected: %d connections from C): %.0f KiB of RSS, "
          "%.2f threads, %.2f fds per connection (%d served paths of C "
          "through A, so %.1f connections per served path)."
          % (r["tag"], dc, (r["A"][0] - r["A0"][0]) / dc,
             (r["A"][1] - r["A0"][1]) / dc, (r["A"][2] - r["A0"][2]) / dc,
             r["N"], dc / r["N"]))
        w("")
for r in rows[-2:] if rows and rows[-1]["pair"] else rows[-1:]:
    try:
        w("**Threads by name** at %s disks (the kernel's thread names):\n"
          % r["tag"])
        for line in open("%s/threads-%s" % (results.rsplit("/", 1)[0],
                                            r["tag"])):
            node, _, names = line.partition(":")
            w("- %s:%s" % (node, names.rstrip()))
        w("")
        w("(`altpathd`: threads without a name of their own, e.g. the "
          "units' threads and the NBD server's reader and writer of each "
          "connection; `iou-wrk`: the kernel's io_uring workers of the "
          "direct paths.)\n")
    except OSError:
        pass
for line in open(notes):
    head, _, rest = line.strip().partition(": ")
    w("**%s:** %s\n" % (head, rest))
if failed:
    w("**Did not converge:** " + "; ".join("%s disks: %s" % f for f in failed)
      + "\n")
w("![Convergence time and RSS of each node against the number of disks]"
  "(scale.png)\n")
open(report_dir + "/scale.md", "w").write("\n".join(out))
# Data block 0: the full topology; block 1: the reduced one (A and C).
# A figure that is not a number (a hot-add past its bound) is missing: "-".
def num(x):
    try:
        return "%g" % float(x)
    except ValueError:
        return "-"
for r in full:
    print(r["N"], num(r["tA"]), num(r["tB"]), num(r["tC"]), num(r["hot"]),
          r["A"][0] / 1024, r["B"][0] / 1024, r["C"][0] / 1024)
print("\n")
for r in rows:
    if r["pair"]:
        print(r["N"], num(r["tA"]), "-", num(r["tC"]), num(r["hot"]),
              r["A"][0] / 1024, "-",
              r["C"][0] / 1024)
EOF

if grep -q '[0-9]' "$T/plot.dat"; then
  gnuplot 2> "$T/gnuplot.log" <<EOF || { cat "$T/gnuplot.log" >&2; echo "scale.sh: gnuplot failed" >&2; exit 1; }
set terminal pngcairo size 1000,420 font "sans,10"
set output "$REPORT_DIR/scale.png"
set multiplot layout 1,2
set logscale x
set xlabel "disks"
set key top left
set grid
set title "time to converge"
set ylabel "seconds"
set yrange [0:*]
set datafile missing "-"
plot "$T/plot.dat" index 0 using 1:2 with linespoints lc 1 title "A", \
     "" index 0 using 1:3 with linespoints lc 2 title "B", \
     "" index 0 using 1:4 with linespoints lc 3 title "C (from its start)", \
     "" index 0 using 1:5 with linespoints lc 4 title "hot-add, all nodes", \
     "" index 1 using 1:2 with points pt 6 ps 1.5 lc 1 title "A, A+C only", \
     "" index 1 using 1:4 with points pt 6 ps 1.5 lc 3 title "C, A+C only", \
     "" index 1 using 1:5 with points pt 6 ps 1.5 lc 4 title "hot-add, A+C only"
set title "RSS once converged"
set ylabel "MiB"
plot "$T/plot.dat" index 0 using 1:6 with linespoints lc 1 title "A", \
     "" index 0 using 1:7 with linespoints lc 2 title "B", \
     "" index 0 using 1:8 with linespoints lc 3 title "C", \
     "" index 1 using 1:6 with points pt 6 ps 1.5 lc 1 title "A, A+C only", \
     "" index 1 using 1:8 with points pt 6 ps 1.5 lc 3 title "C, A+C only"
unset multiplot
EOF
else
  rm -f "$REPORT_DIR/scale.png"
  sed -i 's/^!\[Convergence.*$/(No N converged: no plot.)/' "$REPORT_DIR/scale.md"
fi
cat "$REPORT_DIR/scale.md"
exit $rc
