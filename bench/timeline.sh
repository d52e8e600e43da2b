#!/usr/bin/env bash
# timeline.sh — the failover timeline (issue 6): per-request latency over
# time for a steady workload through one unit while, in turn,
#
#   1. direct-EIO   the direct path fails every request with EIO, then is
#                   restored (the unit fails over to S1, then back);
#   2. direct-hang  the direct path holds every request (only the request
#                   timeout notices), then is restored;
#   3. node-kill    (direct path disabled, the unit on S1) altpathd S1 is
#                   killed with SIGKILL (the unit goes to S2), then started
#                   again (the unit fails back to S1);
#   4. link-cut     S1's link is cut (its veth in its network namespace is
#                   set down: nothing is sent back, not even a reset), then
#                   restored.
#
# The unit, the workload and the in-process faults are bench/timeline.c
# (build/bench/timeline), driven through a coprocess; this script owns the
# two altpathd nodes (S1 in a network namespace behind a veth pair, S2 on
# 127.0.0.1), the kill, the link cut and the clean-up.  Every time comes
# from timeline's own CLOCK_MONOTONIC.  Output, in REPORT_DIR:
#   timeline.md           a Markdown fragment "## Failover timeline": the
#                         settings, the goals and where they come from, the
#                         plots, a table per fault (time of fault, switch,
#                         failback, longest stall, goal, met?), the errors
#   timeline.png          one panel per fault, latency (log) against time
#   timeline-all.png      the whole run
#   timeline-summary.tsv  the figures (timeline.c describes the columns)
#   timeline-events.tsv   the unit's events (switches, path states)
#
# Environment:
#   BUILD=dir        the build directory (default build); needs altpathd and
#                    bench/timeline
#   QUICK=1          shorter steady phases (under 45 s instead of 3 min)
#   REPORT_DIR=dir   where the fragment and the PNGs go (default
#                    bench/report)
#   TIMEOUT_MS=200   the unit's request timeout
#   DEADLINE_MS=300  the request deadline proposed to S1 and S2
#   FAILBACK_MS=1000 the unit's failback delay
#   KEEP=1           keep the raw data (requests.tsv...) in
#                    REPORT_DIR/timeline-data
#
# Exit status: 0 the run completed (whatever the figures: a benchmark
# reports); 1 a tool failed, crashed or hung; 2 something is missing (it is
# named); 77 skipped (not root: the link cut needs a network namespace; the
# reason is the last line on stderr).
set -uo pipefail

ME=timeline.sh
srcdir=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$srcdir/$BUILD ;; esac
QUICK=${QUICK:-0}
REPORT_DIR=${REPORT_DIR:-$srcdir/bench/report}
TIMEOUT_MS=${TIMEOUT_MS:-200}
DEADLINE_MS=${DEADLINE_MS:-300}
FAILBACK_MS=${FAILBACK_MS:-1000}
CHECKER_MS=100
PERIOD_US=2000
KEEP=${KEEP:-0}
export LC_ALL=C

if [ "$QUICK" = 1 ]; then
  WARM=1.5 HOLD=1.5 SETTLE=1
else
  WARM=4 HOLD=4 SETTLE=3
fi

say () { echo "$ME: $*" >&2; }
die () { say "$*"; exit 1; }

# ------------------------------------------------------------ requirements
[ "$(id -u)" = 0 ] || { say "skipped: needs root (the link cut uses a network namespace and a veth pair)"; exit 77; }
for t in ip gnuplot awk; do
  command -v "$t" > /dev/null || { say "missing $t: install iproute2 / gnuplot-nox / gawk (scripts/install-deps.sh)"; exit 2; }
done
for b in altpathd bench/timeline; do
  [ -x "$BUILD/$b" ] || { say "missing $BUILD/$b: run make"; exit 2; }
done
gnuplot -e 'set terminal pngcairo' > /dev/null 2>&1 \
  || { say "gnuplot has no pngcairo terminal: install gnuplot-nox"; exit 2; }
mkdir -p "$REPORT_DIR" || { say "cannot create REPORT_DIR $REPORT_DIR"; exit 2; }

# ------------------------------------------------------------ clean-up
T=$(mktemp -d /dev/shm/ap-timeline.XXXXXX) || { say "cannot create a directory in /dev/shm"; exit 2; }
NS=aptl$$
VR=aptl$$r
VB=aptl$$b
NET=10.$((100 + $$ % 50)).$(($$ % 250)).
IPR=${NET}1
IPB=${NET}2
S1_PID='' S2_PID='' TLP=''
netns_made=0 veth_made=0

# shellcheck disable=SC2317 # called by the trap
cleanup () {
  set +eu
  for p in $TLP $S1_PID $S2_PID; do kill -9 "$p" 2> /dev/null; done
  for p in $TLP $S1_PID $S2_PID; do wait "$p" 2> /dev/null; done
  [ "$veth_made" = 1 ] && ip link del "$VR" 2> /dev/null
  [ "$netns_made" = 1 ] && ip netns del "$NS" 2> /dev/null
  rm -rf "$T"
}
trap cleanup EXIT
trap 'say "interrupted; cleaning up"; exit 1' INT TERM

# ------------------------------------------------------------ network
# Ports 11100-11199 are this benchmark's.  S1 is alone in its namespace;
# S2's port on the host must be free.
P1=$((11100 + ($$ % 50) * 2))
P2=
for i in $(seq 0 99); do
  p=$((11100 + (P1 - 11100 + 1 + i) % 100))
  ss -Htln "sport = :$p" 2> /dev/null | grep -q . || { P2=$p; break; }
done
[ -n "$P2" ] || die "no free TCP port in 11100-11199 on 127.0.0.1"

ip netns add "$NS" || { say "skipped: cannot create network namespace $NS"; exit 77; }
netns_made=1
ip link add "$VR" type veth peer name "$VB" || { say "skipped: cannot create a veth pair"; exit 77; }
veth_made=1
ip link set "$VB" netns "$NS" || die "cannot move $VB into $NS"
if ! { ip addr add "$IPR/24" dev "$VR" && ip link set "$VR" up \
  && ip -n "$NS" addr add "$IPB/24" dev "$VB" && ip -n "$NS" link set "$VB" up \
  && ip -n "$NS" link set lo up; }; then
  die "cannot configure the veth pair $VR/$VB"
fi

# ------------------------------------------------------------ nodes
IMG=$T/disk100.img
truncate -s 64M "$IMG" || die "cannot create $IMG"

# conf NAME ADDRESS
conf () {
  cat > "$T/$1.conf" <<EOF
[node]
name = $1
[listen]
address = $2
tls = off
[port A]
100 = $IMG
EOF
}
conf S1 "$IPB:$P1"
conf S2 "127.0.0.1:$P2"

# wait_ready NAME PID: altpathd says "ready" in its log once it listens.
wait_ready () {
  for _ in $(seq 100); do
    grep -q ready "$T/$1.log" 2> /dev/null && return 0
    kill -0 "$2" 2> /dev/null || { tail -n 20 "$T/$1.log" >&2; die "altpathd $1 exited at start; its log is above"; }
    sleep 0.05
  done
  tail -n 20 "$T/$1.log" >&2
  die "altpathd $1 not ready after 5 s; its log is above"
}

start_s1 () {
  : > "$T/S1.log"
  # ip netns exec execs altpathd itself, so $! is altpathd.
  ip netns exec "$NS" "$BUILD/altpathd" --config "$T/S1.conf" >> "$T/S1.log" 2>&1 &
  S1_PID=$!
  wait_ready S1 "$S1_PID"
}
start_s1
"$BUILD/altpathd" --config "$T/S2.conf" >> "$T/S2.log" 2>&1 &
S2_PID=$!
wait_ready S2 "$S2_PID"

# ------------------------------------------------------------ the unit
OUT=$T/out
mkdir -p "$OUT"
coproc TL {
  exec "$BUILD/bench/timeline" --image "$IMG" \
    --s1 "nbd://$IPB:$P1/S1%24DKA100" --s2 "nbd://127.0.0.1:$P2/S2%24DKA100" \
    --out "$OUT" --timeout-ms "$TIMEOUT_MS" --deadline-ms "$DEADLINE_MS" \
    --failback-ms "$FAILBACK_MS" --checker-ms "$CHECKER_MS" \
    --period-us "$PERIOD_US" 2> "$T/timeline.err"
}
# bash unsets TL_PID when the coprocess ends: keep it.
TLP=$TL_PID
TL_IN=${TL[1]}
TL_OUT=${TL[0]}

tl_fail () {
  cat "$T/timeline.err" >&2
  die "bench/timeline $*; its messages are above"
}

# cmd WORDS...: send one command, wait for its answer (ANS, AT).
cmd () {
  echo "$*" >&"$TL_IN" || tl_fail "is gone (sending: $*)"
  read -r -t 30 ANS _ <&"$TL_OUT" || tl_fail "did not answer \"$*\" within 30 s"
  [ "$ANS" = error ] && tl_fail "refused \"$*\""
  return 0
}

read -r -t 30 ANS _ <&"$TL_OUT" || tl_fail "did not start (30 s)"
[ "$ANS" = ready ] || tl_fail "said \"$ANS\" at start"

# wait_active PATH MS WHAT: the unit is on PATH within MS, or say so (a
# missing switch is a finding, not a failure of the tools).
wait_active () {
  cmd wait "$1" "$2"
  [ "$ANS" = ok ] || say "$3: the unit was not on $1 within $2 ms"
}

# Goals, from the configured values (see the fragment for why).
FENCE_MS=$((DEADLINE_MS + DEADLINE_MS / 10 + 20))
GOAL_EIO=50
GOAL_HANG=$((TIMEOUT_MS + 50))
GOAL_KILL=$((FENCE_MS + 50))
GOAL_CUT=$((TIMEOUT_MS + FENCE_MS + 50))

wait_active direct 5000 "start"
sleep "$WARM"

say "1/4 direct path: EIO"
cmd fault direct-EIO direct "$GOAL_EIO" eio
sleep "$HOLD"
cmd restore fault
wait_active direct 15000 "failback after EIO"
sleep "$SETTLE"
cmd end

say "2/4 direct path: hang"
cmd fault direct-hang direct "$GOAL_HANG" hang
sleep "$HOLD"
cmd restore fault
wait_active direct 15000 "failback after the hang"
sleep "$SETTLE"
cmd end

say "3/4 node S1: SIGKILL (direct path disabled)"
cmd disable direct
wait_active S1 5000 "disabling the direct path"
sleep "$SETTLE"
cmd fault node-kill S1 "$GOAL_KILL" ext
kill -9 "$S1_PID"
wait "$S1_PID" 2> /dev/null
S1_PID=
sleep "$HOLD"
start_s1
cmd restore ext
wait_active S1 15000 "failback after S1's restart"
sleep "$SETTLE"
cmd end

say "4/4 S1's link: cut"
# The mark comes first, as for the kill: starting ip(8) takes a few ms (tens
# on a busy machine), which then counts in the time to the switch, but not
# in the stall (no request is held before the cut).
cmd fault link-cut S1 "$GOAL_CUT" ext
ip -n "$NS" link set "$VB" down || die "cannot set $VB down"
sleep "$HOLD"
ip -n "$NS" link set "$VB" up || die "cannot set $VB up"
cmd restore ext
wait_active S1 15000 "failback after the link came back"
sleep "$SETTLE"
cmd end

for n in S1 S2; do
  p=S1_PID; [ "$n" = S2 ] && p=S2_PID
  kill -0 "${!p}" 2> /dev/null || { tail -n 20 "$T/$n.log" >&2; die "altpathd $n died during the run; its log is above"; }
done
cmd enable direct
wait_active direct 5000 "enabling the direct path"
sleep 0.5
echo quit >&"$TL_IN"
wait "$TLP"
rc=$?
TLP=
[ "$rc" = 0 ] || tl_fail "exited with status $rc"
cat "$T/timeline.err" >&2
for f in summary events requests marks; do
  [ -s "$OUT/$f.tsv" ] || tl_fail "wrote no $f.tsv"
done

# ------------------------------------------------------------ the plots
# One gnuplot script: the whole run, then one panel per fault with its
# marks (fault red, switch orange, restore green, failback blue).
REQ=$OUT/requests.tsv
{
  cat <<EOF
set terminal pngcairo size 1400,1000 font "sans,10"
set datafile separator "\t"
set logscale y
# One scale for every panel: up to 1 s, or the longest latency.
set yrange [0.01 : $(awk -F'\t' '!/^#/ && $2 > m { m = $2 } END { print (m > 1000 ? m * 1.5 : 1000) }' "$REQ")]
set format y "%g"
set ylabel "latency (ms)"
set xlabel "time (s)"
set grid ytics
set key below horizontal
set tmargin 4
set style line 1 lc rgb "#1f77b4" pt 7 ps 0.3
set style line 2 lc rgb "#2ca02c" pt 7 ps 0.3
set style line 3 lc rgb "#9467bd" pt 7 ps 0.3
set style line 4 lc rgb "#7f7f7f" pt 7 ps 0.3
set style line 5 lc rgb "#d62728" pt 2 ps 1.5
EOF
  plot_cmd="plot '$REQ' using 1:(\$3==0 && \$5==0 ? \$2 : 1/0) ls 1 title 'direct', \
 '' using 1:(\$3==1 && \$5==0 ? \$2 : 1/0) ls 2 title 'S1', \
 '' using 1:(\$3==2 && \$5==0 ? \$2 : 1/0) ls 3 title 'S2', \
 '' using 1:(\$3==3 && \$5==0 ? \$2 : 1/0) ls 4 title 'path unknown', \
 '' using 1:(\$5!=0 ? \$2 : 1/0) ls 5 title 'error to the caller'"
  echo "set output '$REPORT_DIR/timeline-all.png'"
  echo "set terminal pngcairo size 1400,500 font 'sans,10'"
  echo "set title 'Failover timeline: every request (completion time, latency)'"
  awk -F'\t' '!/^#/ && $1 != "baseline" && $1 != "late" {
      printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#d62728\" lw 1.5\n", $3, $3
      printf "set label \"%s \" at %s, graph 1.03 right front font \",8\" tc rgb \"#d62728\"\n", $1, $3
      if ($4 >= 0) printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#ff7f0e\" dt 2\n", $4, $4
      if ($6 >= 0) printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#2ca02c\" lw 1.5\n", $6, $6
      if ($7 >= 0) printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#1f77b4\" dt 2\n", $7, $7
    }' "$OUT/summary.tsv"
  echo "$plot_cmd"
  echo "unset arrow; unset label"
  echo "set output '$REPORT_DIR/timeline.png'"
  echo "set terminal pngcairo size 1400,1000 font 'sans,10'"
  echo "set multiplot layout 2,2"
  # Each panel: from 1 s before the fault to the end of its phase.
  awk -F'\t' -v marks="$OUT/marks.tsv" '
    BEGIN { while ((getline l < marks) > 0) { if (l ~ /^#/) continue; split(l, m, "\t"); if (m[2] == "end") ends[++ne] = m[1] } }
    !/^#/ && $1 != "baseline" && $1 != "late" {
      k++; x0 = $3 - 1; x1 = (k in ends) ? ends[k] + 0.2 : $3 + 10
      printf "unset arrow; unset label\n"
      printf "set xrange [%s:%s]\n", x0, x1
      printf "set title \"%s: longest stall %.1f ms (goal < %s ms); switch to %s %s\"\n", $1, $8, $10, $5, ($4 >= 0 ? sprintf("after %.0f ms", ($4 - $3) * 1000) : "not seen")
      printf "set arrow from graph 0, first %s to graph 1, first %s nohead dt 3 lc rgb \"black\"\n", $10, $10
      printf "set label \"goal\" at graph 0.99, first %s right offset 0,0.6 front font \",8\"\n", $10
      printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#d62728\" lw 1.5\n", $3, $3
      printf "set label \"fault \" at %s, graph 1.03 right front tc rgb \"#d62728\"\n", $3
      if ($4 >= 0) {
        printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#ff7f0e\" dt 2 lw 1.5\n", $4, $4
        printf "set label \" switch\" at %s, graph 0.03 left front tc rgb \"#ff7f0e\"\n", $4
      }
      if ($6 >= 0) {
        printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#2ca02c\" lw 1.5\n", $6, $6
        printf "set label \"restored \" at %s, graph 1.03 right front tc rgb \"#2ca02c\"\n", $6
      }
      if ($7 >= 0) {
        printf "set arrow from %s, graph 0 to %s, graph 1 nohead lc rgb \"#1f77b4\" dt 2 lw 1.5\n", $7, $7
        printf "set label \" failback\" at %s, graph 0.03 left front tc rgb \"#1f77b4\"\n", $7
      }
      printf "PLOT\n"
    }' "$OUT/summary.tsv" | while IFS= read -r l; do
      if [ "$l" = PLOT ]; then echo "$plot_cmd"; else echo "$l"; fi
    done
  echo "unset multiplot"
} > "$T/plot.gp"
gnuplot "$T/plot.gp" 2> "$T/gnuplot.err" || { cat "$T/gnuplot.err" >&2; die "gnuplot failed; its messages are above"; }

# ------------------------------------------------------------ the fragment
cp "$OUT/summary.tsv" "$REPORT_DIR/timeline-summary.tsv"
cp "$OUT/events.tsv" "$REPORT_DIR/timeline-events.tsv"
if [ "$KEEP" = 1 ]; then
  rm -rf "$REPORT_DIR/timeline-data"
  cp -r "$OUT" "$REPORT_DIR/timeline-data"
fi
total=$(awk -F'\t' '!/^#/' "$REQ" | wc -l)
errs=$(awk -F'\t' '!/^#/ && $5 != 0' "$REQ" | wc -l)
lost=$(awk -F'\t' '!/^#/ && $1 != "baseline" && $1 != "late" { s += $12 } END { print s + 0 }' "$OUT/summary.tsv")
{
  echo "## Failover timeline"
  echo
  echo "One unit (\`bench/timeline\`, libaltpath in one process) over three paths to one"
  echo "64 MiB image in /dev/shm: \`direct\` (O_DIRECT, inside the fault-injecting"
  echo "wrapper), \`S1\` (served over TCP by altpathd node S1 in a network namespace"
  echo "behind a veth pair; priority 2) and \`S2\` (served by altpathd S2 on 127.0.0.1;"
  echo "priority 1). Workload: open loop, one 4 KiB request every $((PERIOD_US / 1000)) ms,"
  echo "reads and writes alternating, random offsets; every request is logged"
  echo "with the path that completed it (the path trace hook). Unit: request"
  echo "timeout ${TIMEOUT_MS} ms, checker ${CHECKER_MS} ms, failback after ${FAILBACK_MS} ms;"
  echo "served paths: request deadline N = ${DEADLINE_MS} ms, 2 connections."
  echo "Faults, in turn, each held ${HOLD} s then restored: the direct path returns"
  echo "EIO; the direct path hangs; with the direct path disabled (the unit on S1)"
  echo "S1 is killed (SIGKILL) and restarted; S1's link is cut (its veth set down"
  echo "in its namespace: silence, no reset) and restored.$([ "$QUICK" = 1 ] && echo " QUICK=1: short steady phases.")"
  echo
  echo "![Failover timeline, one panel per fault: latency of every request against its completion time; red fault, orange switch, green restored, blue failback](timeline.png)"
  echo
  echo "| fault | fault at (s) | switch at (s) | to | restored at (s) | failback at (s) | longest stall (ms) | goal (ms) | met? | stall at failback (ms) | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '!/^#/ && $1 != "baseline" && $1 != "late" {
      sw = $4 < 0 ? "—" : sprintf("%.3f (+%.0f ms)", $4, ($4 - $3) * 1000)
      fb = $7 < 0 ? "— (not seen)" : sprintf("%.3f (+%.0f ms)", $7, ($7 - $6) * 1000)
      met = ($8 < $10 && $4 >= 0 && $11 + $12 == 0) ? "yes" : "**no**"
      printf "| %s (%s) | %.3f | %s | %s | %.3f | %s | %.1f | < %s | %s | %.1f | %d |\n",
        $1, $2, $3, sw, $5, $6, fb, $8, $10, met, $9, $11 + $12 }' "$OUT/summary.tsv"
  echo
  awk -F'\t' '$1 == "baseline" { printf "Before the first fault (%d requests): latency p50 %.3f ms, p99 %.3f ms, max %.3f ms.\n", $3, $4, $5, $6 }
    $1 == "late" { printf "The load generator fell more than 10 ms behind its schedule %d times, by at most %.1f ms (its thread did not get the CPU in time: the requests it did not send then are missing from the plot rather than slow; expect 0 on a quiet machine).\n", $3, $4 }' "$OUT/summary.tsv"
  echo "Requests: $total; **errors returned to the caller: $errs** (must be 0); never completed: $lost."
  echo
  echo "*Longest stall*: of the requests in flight at some time between the fault"
  echo "and the unit's switch away from the faulted path (its SWITCH event), the"
  echo "longest wait after the fault (from the later of its submission and the"
  echo "fault to its completion; open loop, so every request issued during the"
  echo "stall waits for its end); hiccups of the new path after the switch are not"
  echo "counted. *Stall at failback*: the same between the unit entering SWITCH"
  echo "for the failback and its flip back (drain, flush, flip). Failback comes"
  echo "${FAILBACK_MS} ms (failback delay) after the path answers its probes again;"
  echo "after a node restart or a link cut that includes the served path's"
  echo "reconnection backoff (50 ms doubling to 2 s). Times are seconds since"
  # shellcheck disable=SC2016 # Markdown backquotes, not a command
  echo '`timeline` started, all on its CLOCK_MONOTONIC; the fault time of node-kill'
  echo 'and link-cut is taken just before the script sends the SIGKILL or starts'
  # shellcheck disable=SC2016
  echo '`ip link set down`, so their switch times include that.'
  echo
  echo "Goals, from the project's figures and this run's settings:"
  echo
  echo "- direct-EIO: < ${GOAL_EIO} ms (issue 6's failover goal for an error the path reports)."
  echo "- direct-hang: < request timeout + 50 ms = ${TIMEOUT_MS} + 50 = ${GOAL_HANG} ms (only the"
  echo "  timeout can notice a silent path)."
  echo "- node-kill: the loss of the connection is seen at once (the kernel closes"
  echo "  the dead node's sockets), but writes in doubt go elsewhere only after the"
  echo "  deadline fence, N + N/10 + 20 ms = ${FENCE_MS} ms (docs/served.md); goal"
  echo "  ${FENCE_MS} + 50 ms = ${GOAL_KILL} ms. With no write in flight on S1 when it"
  echo "  died nothing is in doubt, and the switch takes a few ms: this figure"
  echo "  varies from run to run with the moment of the kill."
  echo "- link-cut: nothing comes back, so the request timeout notices, then the same"
  echo "  fence: ${TIMEOUT_MS} + ${FENCE_MS} + 50 ms = ${GOAL_CUT} ms."
  echo
  echo "Whole run (every request; red lines faults, orange switches, green restores, blue failbacks):"
  echo
  echo "![Failover timeline, the whole run](timeline-all.png)"
} > "$REPORT_DIR/timeline.md"
say "wrote $REPORT_DIR/timeline.md, timeline.png, timeline-all.png"
exit 0
