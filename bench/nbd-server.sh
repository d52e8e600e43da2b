#!/usr/bin/env bash
# bench/nbd-server.sh — altpathd's NBD server against nbdkit and qemu-nbd
# (issue 3).
#
# 1. Makes a SIZE (default 512 MiB) image in /dev/shm (tmpfs, so the disk
#    does not hide the protocol's cost) and fills it, plus a source file of
#    the same size for the writes; for the TLS rows a smaller pair
#    (NBD_TLS_SIZE, default 64 MiB: TLS-PSK costs about 10x, and the
#    whole of `make bench` must stay under 15 minutes).
# 2. Serves the same file in turn with each server:
#      altpathd     a configuration written into the work directory
#                   (O_DIRECT + io_uring on the file)
#      nbdkit       nbdkit -f file file=IMG
#      qemu-nbd     qemu-nbd -f raw -t -e 16 (default cache and aio)
#      qemu-direct  the same with --cache=none --aio=io_uring (O_DIRECT,
#                   like altpathd)
#      ceiling      nbdkit -f --filter=noextents null: stores nothing, reads
#                   zeroes, and is not a peer; what nbdcopy reaches against
#                   a server that costs next to nothing, so about the
#                   highest ratio any server could show on this machine
#                   (on 2 CPUs nbdcopy's own CPU time bounds the sequential
#                   rows).  Plaintext nbdcopy rows only: with TLS nbdkit
#                   would get another cipher than altpathd, and on fio's
#                   4 KiB rows nbdkit's own cost per request is most of it.
#    over TCP on 127.0.0.1 and over a Unix socket, each in plaintext and
#    with TLS-PSK (psktool; nbdkit --tls=require --tls-psk, qemu-nbd
#    --object tls-creds-psk, altpathd tls = require).  Against each, the
#    same clients:
#      seqread    nbdcopy URI null:            (MB/s = bytes / wall time)
#      seqwrite   nbdcopy SOURCE-FILE URI      (MB/s)
#      randread, randwrite  fio --ioengine=nbd, 4 KiB random reads and
#                 writes at QD 1 and 32 (IOPS; NBD_RANDOM); plaintext only:
#                 fio's nbd engine cannot load a PSK file
#    RUNS times (default 3), the servers' order reversed every other run.
#    nbdcopy's connections (multi-conn) are counted from its open sockets.
# 3. Memory: altpathd (and nbdkit, for comparison) on the Unix socket
#    under NBD_MEM_CLIENTS (16) fio nbd clients, each with NBD_MEM_QD (64)
#    requests in flight, for NBD_MEM_SECONDS (10); VmRSS sampled from
#    /proc every 0.1 s, VmHWM read at the end.  Once with 4 KiB and once
#    with 256 KiB (nbdcopy's request size) random reads and writes.
# 4. bench/report/nbd-server.md: the machine, one table row per workload,
#    transport and security: each server's median (min-max), the median of
#    the per-run ratios altpathd / best peer, the goal (>= 1.2) met or
#    missed; the memory table against the 64 MiB goal; every run's figures.
#    With RESULTS set, also one line per measurement there (bench/lib.sh),
#    for bench/report.py's REPORT.md.
#
# Every server is stopped by its PID (and at exit by a trap); only loopback
# and Unix sockets are used; every tool runs under `timeout`.
#
# Exit status: 0 when every tool ran, whether or not a goal was met; 1 when
# a tool or a server failed, crashed or hung (also when altpathd does not
# exit 0 on SIGTERM); 2 when something needed is missing.
#
# Environment:
#   BUILD=dir            where altpathd is (default build)
#   QUICK=1              RUNS=1 SIZE=64M NBD_TLS_SIZE=16M NBD_SECONDS=0.7
#                        NBD_RAMP=0.2 NBD_MEM_SECONDS=2 NBD_MEM_SERVERS=altpathd
#                        NBD_MEM_CLIENTS=4
#                        NBD_SETTINGS="tcp:plain unix:tls" NBD_RANDOM=randread:32
#                        NBD_MEM_BS=256k: a smoke test (< 40 s)
#   RUNS=n               runs per server and row (default 3)
#   SIZE=size            the plaintext image (default 512M)
#   NBD_TLS_SIZE=size    the TLS image (default 64M; SIZE's value uses one
#                        image for all rows)
#   NBD_SECONDS=s        fio's measured seconds per run (default 1)
#   NBD_RAMP=s           fio's warm-up (default 0.25)
#   NBD_SETTINGS="tcp:plain unix:plain tcp:tls unix:tls"  transports and
#                        security measured
#   NBD_RANDOM="randread:1 randread:32 randwrite:1 randwrite:32"  fio's
#                        4 KiB random rows, NAME:QD
#   NBD_MEM_SECONDS=s    the memory load's duration (default 3)
#   NBD_MEM_BS="4k 256k" request sizes of the memory load
#   NBD_MEM_CLIENTS=n    fio jobs (connections) for it (default 16)
#   NBD_MEM_QD=n         requests in flight per job (default 64)
#   NBD_MEM_SERVERS="altpathd nbdkit"   servers measured for memory
#   NBD_SERVERS="altpathd nbdkit qemu-nbd qemu-direct ceiling"
#   NBD_QEMU_SHARED=n    qemu-nbd --shared (default 16; with qemu-nbd's
#                        default of 1 it does not advertise multi-conn)
#   NBD_IMAGE_DIR=dir    default /dev/shm
#   NBD_REPORT=file      default bench/report/nbd-server.md
#   RESULTS=file         also append every measurement here (bench/lib.sh)
set -uo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir" || exit 2
export LC_ALL=C
ME=nbd-server.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

BUILD=${BUILD:-build}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-1} SIZE=${SIZE:-64M} NBD_TLS_SIZE=${NBD_TLS_SIZE:-16M}
  NBD_MEM_SERVERS=${NBD_MEM_SERVERS:-altpathd} NBD_MEM_CLIENTS=${NBD_MEM_CLIENTS:-4}
  NBD_SECONDS=${NBD_SECONDS:-0.7} NBD_RAMP=${NBD_RAMP:-0.2}
  NBD_MEM_SECONDS=${NBD_MEM_SECONDS:-2}
  NBD_SETTINGS=${NBD_SETTINGS:-"tcp:plain unix:tls"}
  NBD_RANDOM=${NBD_RANDOM:-"randread:32"} NBD_MEM_BS=${NBD_MEM_BS:-256k}
fi
RUNS=${RUNS:-3}
SIZE=${SIZE:-512M}
NBD_TLS_SIZE=${NBD_TLS_SIZE:-64M}
NBD_SECONDS=${NBD_SECONDS:-1}
NBD_RAMP=${NBD_RAMP:-0.25}
NBD_SETTINGS=${NBD_SETTINGS:-"tcp:plain unix:plain tcp:tls unix:tls"}
NBD_RANDOM=${NBD_RANDOM:-"randread:1 randread:32 randwrite:1 randwrite:32"}
NBD_MEM_SECONDS=${NBD_MEM_SECONDS:-3}
NBD_MEM_BS=${NBD_MEM_BS:-"4k 256k"}
NBD_MEM_CLIENTS=${NBD_MEM_CLIENTS:-16}
NBD_MEM_QD=${NBD_MEM_QD:-64}
NBD_MEM_SERVERS=${NBD_MEM_SERVERS:-"altpathd nbdkit"}
NBD_SERVERS=${NBD_SERVERS:-"altpathd nbdkit qemu-nbd qemu-direct ceiling"}
NBD_QEMU_SHARED=${NBD_QEMU_SHARED:-16}
NBD_IMAGE_DIR=${NBD_IMAGE_DIR:-/dev/shm}
REPORT=${NBD_REPORT:-bench/report/nbd-server.md}
GOAL_RATIO=1.2
# The rows issue 3 sets the goal for; the others are measured for reference.
GOAL_ROWS="seqread seqwrite randread:32"
GOAL_RSS_MIB=64
PY=/usr/bin/python3             # Debian's python3 (PEERS.md)

altpathd=$BUILD/altpathd

missing=0
if [ ! -x "$altpathd" ]; then
  say "nbd-server.sh: $altpathd is missing: build it first (make, or set BUILD=dir)"
  missing=1
fi
for t in nbdkit qemu-nbd nbdcopy nbdinfo psktool fio timeout awk sort numfmt; do
  command -v "$t" >/dev/null \
    || { say "nbd-server.sh: $t is not installed (scripts/install-deps.sh installs it)"; missing=1; }
done
[ -x "$PY" ] || { say "nbd-server.sh: $PY is missing"; missing=1; }
if command -v fio >/dev/null && ! fio --enghelp 2>/dev/null | grep -qw nbd; then
  say "nbd-server.sh: this fio has no nbd engine"; missing=1
fi
((missing)) && exit 2

bytes() { numfmt --from=iec "${1%B}"; }
size_b=$(bytes "$SIZE") || exit 2
tls_size_b=$(bytes "$NBD_TLS_SIZE") || exit 2
need=$(( (size_b + tls_size_b) * 2 / 1048576 + 64 ))
avail=$(df -Pm "$NBD_IMAGE_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -z "$avail" ] || [ "$avail" -lt "$need" ]; then
  say "nbd-server.sh: $NBD_IMAGE_DIR has ${avail:-no} MiB free; $need MiB are needed"
  exit 2
fi

work=$(mktemp -d "$NBD_IMAGE_DIR/altpath-nbd-bench.XXXXXX") || exit 2
SPID=                           # the server running now
SAMPLER=                        # a /proc sampler running now
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
    kill -TERM "$SPID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SPID" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
failed=0                        # a tool or a server failed, crashed or hung
problems=()                     # what went wrong, for the report

median() {
  (($#)) || { echo -; return; }
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          printf "%.10g\n", m }'
}

# A figure for the table: whole numbers above 100, else to 0.1.
fmt() {
  awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-";
                         else if (v >= 100) printf "%.0f\n", v; else printf "%.1f\n", v }'
}

# "median (min–max)" of the arguments.
summary() {
  (($#)) || { echo "failed"; return; }
  local m lo hi
  m=$(median "$@")
  lo=$(printf '%s\n' "$@" | sort -g | head -n 1)
  hi=$(printf '%s\n' "$@" | sort -g | tail -n 1)
  if (($# == 1)); then fmt "$m"; else echo "$(fmt "$m") ($(fmt "$lo")–$(fmt "$hi"))"; fi
}

# ------------------------------------------------------------------ files
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
step "making the images in $work"
fill() {                        # fill FILE SIZE
  run_tool "fio (fill)" 300 "$work/fill" -- \
    fio --name=fill --filename="$1" --size="$2" --rw=write --bs=1M \
        --ioengine=psync --output-format=terse
}
img=$work/image src=$work/source
fill "$img" "$SIZE" && fill "$src" "$SIZE" || exit 1
if [ "$tls_size_b" = "$size_b" ]; then
  img_tls=$img src_tls=$src
else
  img_tls=$work/image-tls src_tls=$work/source-tls
  fill "$img_tls" "$NBD_TLS_SIZE" && fill "$src_tls" "$NBD_TLS_SIZE" || exit 1
fi

mkdir -p "$work/psk"
psktool -u alice -p "$work/psk/keys.psk" >/dev/null 2>"$work/psktool.err" \
  || { say "nbd-server.sh: psktool failed"; cat "$work/psktool.err" >&2; exit 1; }
psk=$work/psk/keys.psk          # qemu reads dir=$work/psk (keys.psk in it)

# ---------------------------------------------------------------- servers
# start_server NAME TRANSPORT SECURITY IMAGE: start NAME serving IMAGE on
# TRANSPORT (tcp|unix) in SECURITY (plain|tls); wait until it answers.
# Sets SPID, URI (for nbdcopy and nbdinfo) and LOG.
start_server() {
  local name=$1 tr=$2 sec=$3 image=$4 port sock export='' _try
  for _try in 1 2 3; do          # another process may take the free port
    port=$(free_port) sock=$work/$name.sock
    rm -f "$sock"
    LOG=$work/$name.$tr.$sec.log
    case $name in
      altpathd)
        local conf=$work/altpathd.conf
        {
          echo "[node]"
          echo "name = bench"
          echo "[listen]"
          if [ "$tr" = tcp ]; then echo "address = 127.0.0.1:$port"; else echo "address = unix:$sock"; fi
          if [ "$sec" = tls ]; then echo "tls = require"; else echo "tls = off"; fi
          if [ "$sec" = tls ]; then echo "[tls]"; echo "psk-file = $psk"; fi
          echo "[control]"
          echo "socket = $work/control.sock"
          echo "[port A]"
          echo "1 = $image"
        } >"$conf"
        export='BENCH%24DKA1'
        "$altpathd" --config "$conf" >"$LOG" 2>&1 &
        ;;
      nbdkit)
        local a=()
        if [ "$tr" = tcp ]; then a+=(-i 127.0.0.1 -p "$port"); else a+=(-U "$sock"); fi
        [ "$sec" = tls ] && a+=(--tls=require --tls-psk="$psk")
        nbdkit -f "${a[@]}" file file="$image" >"$LOG" 2>&1 &
        ;;
      ceiling)
        local a=()
        if [ "$tr" = tcp ]; then a+=(-i 127.0.0.1 -p "$port"); else a+=(-U "$sock"); fi
        [ "$sec" = tls ] && a+=(--tls=require --tls-psk="$psk")
        # noextents: otherwise nbdcopy sees one hole and reads nothing.
        nbdkit -f "${a[@]}" --filter=noextents null size="$(stat -c %s "$image")" >"$LOG" 2>&1 &
        ;;
      qemu-nbd|qemu-direct)
        local a=(-f raw --persistent --shared="$NBD_QEMU_SHARED")
        [ "$name" = qemu-direct ] && a+=(--cache=none --aio=io_uring)
        if [ "$tr" = tcp ]; then a+=(-b 127.0.0.1 -p "$port"); else a+=(-k "$sock"); fi
        [ "$sec" = tls ] && a+=(--object "tls-creds-psk,id=tls0,endpoint=server,dir=$work/psk"
                                --tls-creds tls0)
        qemu-nbd "${a[@]}" "$image" >"$LOG" 2>&1 &
        ;;
      *) say "nbd-server.sh: unknown server $name"; exit 2 ;;
    esac
    SPID=$!
    if [ "$sec" = tls ]; then
      if [ "$tr" = tcp ]; then URI="nbds://alice@127.0.0.1:$port/$export?tls-psk-file=$psk"
      else URI="nbds+unix://alice@/$export?socket=$sock&tls-psk-file=$psk"; fi
    else
      if [ "$tr" = tcp ]; then URI="nbd://127.0.0.1:$port/$export"
      else URI="nbd+unix:///$export?socket=$sock"; fi
    fi
    local i
    for i in $(seq 1 100); do
      kill -0 "$SPID" 2>/dev/null || break
      if timeout 10 nbdinfo --size "$URI" >/dev/null 2>&1; then return 0; fi
      sleep 0.1
    done
    if kill -0 "$SPID" 2>/dev/null; then
      kill -KILL "$SPID"; wait "$SPID" 2>/dev/null
      SPID=
      tool_failed "$name" 124 "$LOG" "did not answer nbdinfo within 10 s ($tr, $sec)"
      return 1
    fi
    wait "$SPID" 2>/dev/null
    SPID=
    # A listener that could not bind: try another port.
    grep -qi -e 'in use' -e 'bind' "$LOG" && continue
    tool_failed "$name" 1 "$LOG" "exited at start ($tr, $sec)"
    return 1
  done
  tool_failed "$name" 1 "$LOG" "could not bind a port in 3 tries"
  return 1
}

# stop_server NAME: SIGTERM, wait (10 s, then SIGKILL).  altpathd must exit 0.
stop_server() {
  local name=$1 rc
  [ -n "$SPID" ] || return 0
  if ! kill -0 "$SPID" 2>/dev/null; then
    wait "$SPID"; rc=$?
    SPID=
    tool_failed "$name" "$rc" "$LOG" "the server was gone before it was stopped (status $rc)"
    return 1
  fi
  kill -TERM "$SPID"
  for _ in $(seq 1 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SPID" 2>/dev/null; then
    kill -KILL "$SPID"; wait "$SPID" 2>/dev/null
    SPID=
    tool_failed "$name" 124 "$LOG" "did not stop within 10 s of SIGTERM"
    return 1
  fi
  wait "$SPID"; rc=$?
  SPID=
  if [ "$name" = altpathd ] && [ "$rc" != 0 ]; then
    tool_failed "$name" "$rc" "$LOG" "exited with status $rc on SIGTERM"
    return 1
  fi
  # Anything altpathd logged beyond its info lines goes in the report.
  if [ "$name" = altpathd ]; then
    grep -v -e '^altpathd: info:' -e '^altpath: info:' "$LOG" >>"$work/altpathd.messages"
  fi
  return 0
}

# ---------------------------------------------------------------- clients
# run_copy NAME OUT SRC DST: nbdcopy SRC DST under a time limit.  Sets
# COPY_SECS and COPY_CONNS: wall time of nbdcopy (start to exit: connecting
# and the handshake included), and the most sockets it had open at once,
# sampled from /proc every 20 ms without forking.
run_copy() {
  local name=$1 out=$2 t0 t1 tpid rc
  t0=$EPOCHREALTIME
  timeout --kill-after=10 300 nbdcopy "$3" "$4" >"$out" 2>"$out.err" &
  tpid=$!
  (
    max=0 kids=
    while kill -0 "$tpid" 2>/dev/null; do
      [ -n "$kids" ] || read -r kids <"/proc/$tpid/task/$tpid/children" 2>/dev/null
      n=0
      for k in $kids; do
        for f in /proc/"$k"/fd/*; do [[ -S $f ]] && ((n++)); done
      done
      ((n > max)) && { max=$n; echo "$max" >"$out.conns"; }
      sleep 0.02
    done
  ) &
  SAMPLER=$!
  wait "$tpid"; rc=$?
  t1=$EPOCHREALTIME
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null
  SAMPLER=
  if [ "$rc" != 0 ]; then
    tool_failed "$name" "$rc" "$out.err" "nbdcopy $3 $4"
    return 1
  fi
  COPY_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
  COPY_CONNS=$(cat "$out.conns" 2>/dev/null || echo '?')
}

mbs() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / t / 1e6 }'; }

# record ROW SERVER RUN VALUE UNIT P50 P99: one line in RESULTS (bench/lib.sh).
record() {
  [ -n "${RESULTS:-}" ] || return 0
  local role=peer
  [ "$2" = altpathd ] && role=ours
  [ "$2" = ceiling ] && role=ceiling
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' nbd "$1" "$(label "$2")" "$role" "$3" "$4" "$5" "$6" "$7" >>"$RESULTS"
}
# The row's name in RESULTS: "seqread 1M TCP + TLS-PSK", "randwrite 4k QD1 Unix".
row_name() {                    # row_name WORKLOAD TRANSPORT SECURITY
  local t
  t=$([ "$2" = tcp ] && echo "TCP" || echo "Unix")
  [ "$3" = tls ] && t+=" + TLS-PSK"
  case $1 in
    seq*) echo "$1 1M $t" ;;
    *) echo "${1%%:*} 4k QD${1#*:} $t" ;;
  esac
}

label() {
  case $1 in
    altpathd) echo "altpathd" ;;
    nbdkit) echo "nbdkit file" ;;
    qemu-nbd) echo "qemu-nbd" ;;
    qemu-direct) echo "qemu-nbd O_DIRECT io_uring" ;;
    ceiling) echo "nbdkit null (ceiling)" ;;
  esac
}

fio_limit=$(awk -v s="$NBD_SECONDS" -v r="$NBD_RAMP" 'BEGIN { printf "%d", s + r + 60 }')
fio_ramp=$(awk -v r="$NBD_RAMP" 'BEGIN { printf "%dms", r * 1000 }')
# fio reads a bare --runtime as whole seconds: 0.7 would be 0 (no limit).
fio_runtime=$(awk -v r="$NBD_SECONDS" 'BEGIN { printf "%dms", r * 1000 }')

declare -A res                  # res[row,server,run] = MB/s or IOPS
declare -A lat                  # lat[row,server,run] = "p50 p99" (randread)
declare -A conns                # conns[row,server] = nbdcopy's connections
settings=$NBD_SETTINGS

read -ra servers <<<"$NBD_SERVERS"
peers=()
for s in "${servers[@]}"; do
  case $s in altpathd|ceiling) ;; *) peers+=("$s") ;; esac
done

for ((run = 1; run <= RUNS; run++)); do
  if ((run % 2)); then order=("${servers[@]}")
  else order=(); for ((i = ${#servers[@]} - 1; i >= 0; i--)); do order+=("${servers[$i]}"); done; fi
  for setting in $settings; do
    IFS=: read -r tr sec <<<"$setting"
    if [ "$sec" = tls ]; then image=$img_tls source=$src_tls bytes=$tls_size_b
    else image=$img source=$src bytes=$size_b; fi
    for s in "${order[@]}"; do
      # The ceiling only where it is one: plaintext nbdcopy rows (with TLS
      # the client would pick another cipher for nbdkit than for us).
      [ "$s" = ceiling ] && [ "$sec" = tls ] && continue
      step "run $run/$RUNS, $tr $sec: $s"
      start_server "$s" "$tr" "$sec" "$image" || continue
      base=$work/$s.$tr.$sec.$run
      # seqread: nbdcopy to null:
      row=seqread,$tr,$sec
      if run_copy "nbdcopy ($s, $tr, $sec)" "$base.seqread" "$URI" null:; then
        res[$row,$s,$run]=$(mbs "$bytes" "$COPY_SECS") conns[$row,$s]=$COPY_CONNS
        record "$(row_name seqread "$tr" "$sec")" "$s" "$run" "${res[$row,$s,$run]}" MB/s - -
      fi
      # seqwrite: nbdcopy from a file
      row=seqwrite,$tr,$sec
      if run_copy "nbdcopy ($s, $tr, $sec)" "$base.seqwrite" "$source" "$URI"; then
        res[$row,$s,$run]=$(mbs "$bytes" "$COPY_SECS") conns[$row,$s]=$COPY_CONNS
        record "$(row_name seqwrite "$tr" "$sec")" "$s" "$run" "${res[$row,$s,$run]}" MB/s - -
      fi
      # randread, randwrite: fio's nbd engine (plaintext only)
      for rq in $NBD_RANDOM; do
        [ "$sec" = plain ] || break
        # fio's rows: nbdkit's own cost per request is most of the time
        # there, so nbdkit null is no ceiling for them.
        [ "$s" = ceiling ] && break
        row=$rq,$tr,$sec rw=${rq%%:*} qd=${rq#*:}
        if run_tool "fio ($s, $tr)" "$fio_limit" "$base.$rw.$qd" -- \
             fio --name="$rw" --ioengine=nbd --uri="$URI" --size="$bytes" \
                 --rw="$rw" --bs=4k --iodepth="$qd" --numjobs=1 \
                 --time_based --runtime="$fio_runtime" --ramp_time="$fio_ramp" \
                 --norandommap --randrepeat=0 --lat_percentiles=1 \
                 --output-format=terse --terse-version=3; then
          read -r iops _ p50 p99 <<<"$(parse_fio "$base.$rw.$qd" "${rw#rand}")"
          if [ -n "${iops:-}" ]; then
            res[$row,$s,$run]=$iops lat[$row,$s,$run]="$p50 $p99"
            record "$(row_name "$rq" "$tr" "$sec")" "$s" "$run" "$iops" IOPS "$p50" "$p99"
          else
            tool_failed "fio ($s, $tr)" 1 "$base.$rw.$qd" "no terse output"
          fi
        fi
      done
      stop_server "$s"
    done
  done
done

# ----------------------------------------------------------------- memory
# VmRSS and VmHWM of PID in kB: "rss hwm".
vm() {
  awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { print r + 0, h + 0 }' "/proc/$1/status" 2>/dev/null
}
declare -A mem                  # mem[server,bs] = "idle_kb peak_rss_kb hwm_kb iops"
mem_limit=$((NBD_MEM_SECONDS + 60))
for bs in $NBD_MEM_BS; do
  for s in $NBD_MEM_SERVERS; do
    step "memory: $s, $NBD_MEM_CLIENTS clients x QD $NBD_MEM_QD, $bs random reads and writes"
    start_server "$s" unix plain "$img" || continue
    sleep 0.5
    read -r idle _ <<<"$(vm "$SPID")"
    out=$work/mem.$s.$bs
    (
      peak=0
      while :; do
        read -r r _ < <(vm "$SPID")
        ((r > peak)) && { peak=$r; echo "$peak" >"$out.peak"; }
        sleep 0.1
      done
    ) &
    SAMPLER=$!
    if run_tool "fio memory ($s, $bs)" "$mem_limit" "$out" -- \
         fio --name=mem --ioengine=nbd --uri="$URI" --size="$size_b" \
             --rw=randrw --rwmixread=50 --bs="$bs" --iodepth="$NBD_MEM_QD" \
             --numjobs="$NBD_MEM_CLIENTS" --group_reporting \
             --time_based --runtime="$NBD_MEM_SECONDS" \
             --norandommap --randrepeat=0 \
             --output-format=terse --terse-version=3; then
      iops=$(awk -F';' '$1 == 3 { printf "%.0f", $8 + $49 }' "$out")
    else
      iops=-
    fi
    kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null
    SAMPLER=
    read -r _ hwm <<<"$(vm "$SPID")"
    mem[$s,$bs]="$idle $(cat "$out.peak" 2>/dev/null || echo 0) ${hwm:-0} ${iops:--}"
    stop_server "$s"
  done
done

# run_ratios ROW SERVER: SERVER / the best peer of each run, one per run
# that has both, separated by spaces.
run_ratios() {
  local row=$1 s=$2 run x best out=()
  for ((run = 1; run <= RUNS; run++)); do
    x=${res[$row,$s,$run]:-}
    best=
    for p in "${peers[@]}"; do
      local y=${res[$row,$p,$run]:-}
      [ -n "$y" ] || continue
      if [ -z "$best" ] || awk -v a="$y" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$y; fi
    done
    if [ -n "$x" ] && [ -n "$best" ]; then
      out+=("$(awk -v a="$x" -v b="$best" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }')")
    fi
  done
  echo "${out[*]}"
}

# ----------------------------------------------------------------- report
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
fs=$(df -T "$NBD_IMAGE_DIR" 2>/dev/null | awk 'NR == 2 { print $2 " on " $1 }')
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
dirty=$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo " (with uncommitted changes)")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "# altpath benchmarks: altpathd's NBD server against nbdkit and qemu-nbd"
  echo
  echo "Written by \`bench/nbd-server.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), source $rev$dirty."
  echo "Figures from one machine; compare ratios, not absolute numbers, across machines."
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPUs (nproc) | $(nproc) × $cpu |"
  echo "| memory | $mem_total |"
  echo "| kernel | $(uname -r) |"
  echo "| load average (1, 5, 15 min) | $load_start at the start, $load_end at the end |"
  echo "| nbdkit | $(nbdkit --version 2>&1 | head -n 1) |"
  echo "| qemu-nbd | $(qemu-nbd --version 2>&1 | head -n 1) |"
  echo "| nbdcopy | $(nbdcopy --version 2>&1 | head -n 1) |"
  echo "| fio | $(fio --version) |"
  echo "| images | $SIZE (plaintext rows) and $NBD_TLS_SIZE (TLS rows) in $NBD_IMAGE_DIR ($fs), filled by fio |"
  echo
  if awk -v a="${load_start%% *}" -v b="${load_end%% *}" -v n="$(nproc)" 'BEGIN { exit !(a > n || b > n) }'; then
    echo "**The load average was above the number of CPUs**: other work competed"
    echo "with the servers and clients for the CPUs, so single runs can be far off"
    echo "(see the per-run figures); trust the medians only where the per-run"
    echo "ranges agree, and run again on a quiet machine (or with more RUNS)"
    echo "before concluding from the throughput rows.  The memory figures do not"
    echo "depend on it."
    echo
  fi
  echo "## Throughput"
  echo
  echo "Each server in turn serves the same file (altpathd: O_DIRECT and"
  echo "io_uring; nbdkit: \`file\` plugin, default threads; qemu-nbd: \`-f raw"
  echo "--persistent --shared=$NBD_QEMU_SHARED\`, default cache and aio, and"
  echo "with \`--cache=none --aio=io_uring\`), on 127.0.0.1 TCP or a Unix"
  echo "socket, plaintext or TLS-PSK (TLS required).  The same client"
  echo "against each: **seqread** \`nbdcopy URI null:\`, **seqwrite**"
  echo "\`nbdcopy FILE URI\` (source file in $NBD_IMAGE_DIR), MB/s = image"
  echo "bytes / nbdcopy's wall time (connecting and the TLS handshake"
  echo "included); **randread, randwrite** fio \`--ioengine=nbd\`, 4 KiB"
  echo "random reads or writes at the row's queue depth, one job (one"
  echo "connection), $NBD_SECONDS s after $NBD_RAMP s, IOPS.  $RUNS run(s), the"
  echo "servers' order reversed every other run.  Cells: median (min–max)."
  echo "The ratio is the median of the per-run ratios altpathd / the best"
  echo "peer of that run.  Goal (issue 3): ratio ≥ $GOAL_RATIO on the sequential"
  echo "rows and on 4 KiB random reads at QD 32; the other rows are for"
  echo "reference.  *ceiling / best peer* (plaintext nbdcopy rows): the same"
  echo "for \`nbdkit null\` behind \`--filter=noextents\` (stores nothing, reads"
  echo "zeroes).  nbdcopy's own CPU time bounds every server; where even this"
  echo "is below the goal, no server can meet it on this machine."
  echo
  echo "nbdcopy opens up to 4 connections to a server that advertises"
  echo "multi-conn (fewer with fewer CPUs: it caps them at its thread count,"
  echo "\`nproc\`), else 1; the *conns* column gives the most sockets nbdcopy"
  echo "had open at once, per server in the order of the columns."
  echo
  hdr="| workload | transport |"; sep="|---|---|"
  for s in "${servers[@]}"; do hdr+=" $(label "$s") |"; sep+="---|"; done
  echo "$hdr conns | altpathd / best peer | per-run range | ceiling / best peer | goal | |"
  echo "$sep---|---|---|---|---|---|"
  for wl in seqread seqwrite $NBD_RANDOM; do
    case $wl in
      seqread) wlabel="seqread (nbdcopy → null:), MB/s" ;;
      seqwrite) wlabel="seqwrite (nbdcopy file →), MB/s" ;;
      *) wlabel="${wl%%:*} 4k QD${wl#*:} (fio nbd), IOPS" ;;
    esac
    for setting in $settings; do
      IFS=: read -r tr sec <<<"$setting"
      row=$wl,$tr,$sec
      tlabel=$([ "$tr" = tcp ] && echo "TCP" || echo "Unix")
      [ "$sec" = tls ] && tlabel+=" + TLS-PSK"
      line="| $wlabel | $tlabel |"
      if [[ $wl == rand* ]] && [ "$sec" = tls ]; then
        for s in "${servers[@]}"; do line+=" n/a |"; done
        echo "$line – | n/a | | | | n/a: fio's nbd engine cannot load a PSK file |"
        continue
      fi
      c=
      for s in "${servers[@]}"; do
        v=()
        for ((run = 1; run <= RUNS; run++)); do
          x=${res[$row,$s,$run]:-}
          [ -n "$x" ] && v+=("$x")
        done
        if [ "$s" = ceiling ] && ! ((${#v[@]})) \
           && { [ "$sec" = tls ] || [[ $wl == rand* ]]; }; then
          line+=" not measured |"     # by design (see the top)
        else
          line+=" $(summary "${v[@]}") |"
        fi
        c+="${c:+/}${conns[$row,$s]:--}"
      done
      [[ $wl == rand* ]] && c="1 each (fio)"
      read -ra ratios <<<"$(run_ratios "$row" altpathd)"
      read -ra cratios <<<"$(run_ratios "$row" ceiling)"
      cr=-
      ((${#cratios[@]})) && cr=$(printf '%.2f' "$(median "${cratios[@]}")")
      goal="(reference)"
      [[ " $GOAL_ROWS " == *" $wl "* ]] && goal="≥ $GOAL_RATIO"
      if ((${#ratios[@]})); then
        r=$(median "${ratios[@]}")
        if [ "$goal" = "(reference)" ]; then verdict=""
        else verdict=$(awk -v r="$r" -v g="$GOAL_RATIO" 'BEGIN { print (r >= g) ? "met" : "**missed**" }'); fi
        if [ "$verdict" = "**missed**" ] && [ "$cr" != - ] \
           && awk -v c="$cr" -v g="$GOAL_RATIO" 'BEGIN { exit !(c < g) }'; then
          verdict+=": out of reach here, the ceiling is $cr"
        fi
        r=$(printf '%.2f' "$r")
        range=$(printf '%s\n' "${ratios[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f\n", lo, hi }')
      else
        r="n/a"; range="n/a"; verdict="tool failed"
      fi
      echo "$line $c | $r | $range | $cr | $goal | $verdict |"
    done
  done
  echo
  echo "## Memory"
  echo
  echo "One server at a time on the Unix socket, plaintext, under one fio"
  echo "(\`--ioengine=nbd\`) with $NBD_MEM_CLIENTS jobs, each its own connection"
  echo "keeping $NBD_MEM_QD requests in flight, random reads and writes (50/50)"
  echo "over the whole image for $NBD_MEM_SECONDS s.  The server's VmRSS is"
  echo "read from \`/proc/PID/status\` before the load (idle) and every 0.1 s"
  echo "during it (peak); VmHWM (the kernel's high-water mark) at the end."
  echo "Goal for altpathd: VmHWM < $GOAL_RSS_MIB MiB; the others for comparison."
  echo
  echo "| server | block | clients × QD | IOPS (read + write) | idle VmRSS MiB | peak VmRSS MiB | VmHWM MiB | goal | |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for bs in $NBD_MEM_BS; do
    for s in $NBD_MEM_SERVERS; do
      m=${mem[$s,$bs]:-}
      if [ -z "$m" ]; then
        echo "| $(label "$s") | $bs | $NBD_MEM_CLIENTS × $NBD_MEM_QD | failed | | | | | |"
        continue
      fi
      read -r idle peak hwm iops <<<"$m"
      if [ "$s" = altpathd ]; then
        goal="< $GOAL_RSS_MIB"
        verdict=$(awk -v h="$hwm" -v g="$GOAL_RSS_MIB" 'BEGIN { print (h / 1024 < g) ? "met" : "**missed**" }')
      else
        goal="(comparison)"; verdict=""
      fi
      printf '| %s | %s | %s × %s | %s | %.1f | %.1f | %.1f | %s | %s |\n' \
        "$(label "$s")" "$bs" "$NBD_MEM_CLIENTS" "$NBD_MEM_QD" "$iops" \
        "$(awk -v k="$idle" 'BEGIN { print k / 1024 }')" \
        "$(awk -v k="$peak" 'BEGIN { print k / 1024 }')" \
        "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')" "$goal" "$verdict"
    done
  done
  echo
  echo "<details><summary>Every run</summary>"
  echo
  echo "MB/s for nbdcopy, IOPS (p50 / p99 latency in µs) for fio."
  echo
  hdr="| row | run |"; sep="|---|---|"
  for s in "${servers[@]}"; do hdr+=" $(label "$s") |"; sep+="---|"; done
  echo "$hdr"
  echo "$sep"
  for wl in seqread seqwrite $NBD_RANDOM; do
    for setting in $settings; do
      IFS=: read -r tr sec <<<"$setting"
      [[ $wl == rand* ]] && [ "$sec" = tls ] && continue
      row=$wl,$tr,$sec
      for ((run = 1; run <= RUNS; run++)); do
        line="| $wl $tr $sec | $run |"
        for s in "${servers[@]}"; do
          x=${res[$row,$s,$run]:-failed}
          [ "$x" = failed ] && [ "$s" = ceiling ] \
            && { [ "$sec" = tls ] || [[ $wl == rand* ]]; } && x="–"
          l=${lat[$row,$s,$run]:-}
          [ -n "$l" ] && x+=" (${l/ / \/ })"
          line+=" $x |"
        done
        echo "$line"
      done
    done
  done
  echo
  echo "</details>"
  if [ -s "$work/altpathd.messages" ]; then
    echo
    echo "altpathd logged, beyond its info lines:"
    echo
    echo '```'
    sort "$work/altpathd.messages" | uniq -c | sort -rn | head -n 30
    echo '```'
  fi
  if ((${#problems[@]})); then
    echo
    echo "Failures:"
    echo
    for p in "${problems[@]}"; do echo "- $p"; done
  fi
} >"$work/report.md"

mkdir -p "$(dirname "$REPORT")"
cp "$work/report.md" "$REPORT"
cat "$REPORT"
step "report written to $REPORT"
if ((failed)); then
  say "nbd-server.sh: a tool or a server failed (see above); the figures are incomplete"
  exit 1
fi
exit 0
