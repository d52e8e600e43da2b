#!/usr/bin/env bash
# metrics.sh — altpathd's Prometheus endpoint ([metrics], daemon/metrics.c)
# against real nodes, scraped with curl:
#
#   ALPHA: [registry] (a directory), [metrics] on 127.0.0.1:<free port>,
#   attached to port B ($4$DKB) — an image in /dev/shm — with fault-dir.
#   BETA: attached to the same port, so that ALPHA's unit $4$DKB100 has a
#   served path to fail over to (one path alone cannot switch).
#
# Checks: every scrape parses as the text format 0.0.4 (a small parser
# below: HELP and TYPE before the samples of their family, families not
# interleaved, every sample line name{labels} value, histograms
# cumulative with +Inf = _count); the unit's and its paths' metrics exist;
# I/O through ALPHA's local socket (nbdcopy) moves the read and write
# counters and bytes by at least what was done; an EIO on the direct
# path (fault-dir trigger) moves the automatic switch counter and shows
# the path failed and the unit on served:BETA, and the failback moves it
# again; bad requests get their status (POST 405, /other 404, a 1 MB
# header 431, garbage 400), a silent client and a full house of them do
# not hold up a scrape for long, and the daemon lives on and stops
# cleanly; [metrics] refuses a non-loopback address without allow-remote.
set -uo pipefail

BUILD=${BUILD:-$(pwd)/build}
altpathd=$BUILD/altpathd
altpath=$BUILD/altpath
PY=/usr/bin/python3
for f in "$altpathd" "$altpath"; do
  [ -x "$f" ] || { echo "SKIP: $f is not built"; exit 77; }
done
[ -x $PY ] || { echo "SKIP: $PY is missing"; exit 77; }
for c in curl nbdcopy; do
  command -v $c >/dev/null || { echo "SKIP: $c is not installed"; exit 77; }
done

tmp=$(mktemp -d /dev/shm/altpath-metrics.XXXXXX)
declare -A pid=()
bg=()
cleanup() {
  for p in "${bg[@]}" "${pid[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -KILL "$p" 2>/dev/null
      wait "$p" 2>/dev/null
    fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
die() {
  echo "FAIL: $*"
  for n in ALPHA BETA; do
    [ -f "$tmp/$n.log" ] || continue
    echo "----- $n's log (last 40 lines) -----"
    tail -n 40 "$tmp/$n.log"
  done
  exit 1
}

D='$4$DKB100'
URI="nbd+unix:///%244%24DKB100?socket=$tmp/ALPHA-units.sock"

# ------------------------------------------------ the text format parser
# prom.py check FILE            parse; print "N families, M samples" or
#                               the first problem (exit 1)
# prom.py get FILE NAME [K=V]...  the value of the one sample of NAME
#                               with at least those labels
cat >"$tmp/prom.py" <<'EOF'
import math, re, sys

NAME = r'[a-zA-Z_:][a-zA-Z0-9_:]*'
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*'
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

def value(s):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?', s):
        raise ValueError("not a number: %r" % s)
    return float(s)

def labels(s, where):
    """name="value",... with \\\\, \\" and \\n escapes; returns a dict."""
    out, i = {}, 0
    while i < len(s):
        m = re.match(r'(%s)="' % LABEL, s[i:])
        if not m:
            raise ValueError("%s: bad label at %r" % (where, s[i:]))
        name, i, v = m.group(1), i + m.end(), ""
        while True:
            if i >= len(s):
                raise ValueError("%s: unterminated label value" % where)
            c = s[i]
            if c == '\\':
                nxt = s[i + 1:i + 2]
                if nxt not in ('\\', '"', 'n'):
                    raise ValueError("%s: bad escape \\%s" % (where, nxt))
                v += '\n' if nxt == 'n' else nxt
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                v += c
                i += 1
        if name in out:
            raise ValueError("%s: label %s twice" % (where, name))
        out[name] = v
        if i < len(s):
            if s[i] != ',':
                raise ValueError("%s: ',' expected at %r" % (where, s[i:]))
            i += 1
    return out

def parse(text):
    """[(name, labels, value)], {family: type}; raises on any problem."""
    if not text.endswith("\n"):
        raise ValueError("the last line has no newline")
    helps, types, samples, done, current = {}, {}, [], set(), None
    seen = set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d" % n
        if line.startswith("#"):
            m = re.fullmatch(r'# (HELP|TYPE) (%s) (.*)' % NAME, line)
            if not m:
                continue                    # a comment
            kind, fam, rest = m.groups()
            if fam in done or (current and current != fam and fam in helps
                               and fam in types):
                raise ValueError("%s: %s %s again" % (where, kind, fam))
            if any(s[3] == fam for s in samples):
                raise ValueError("%s: %s %s after its samples" % (where, kind, fam))
            d = helps if kind == "HELP" else types
            if fam in d:
                raise ValueError("%s: second %s of %s" % (where, kind, fam))
            if kind == "TYPE" and rest not in TYPES:
                raise ValueError("%s: unknown type %r" % (where, rest))
            if kind == "HELP" and not rest.strip():
                raise ValueError("%s: empty HELP of %s" % (where, fam))
            d[fam] = rest
            if current and current != fam:
                done.add(current)
            current = fam
            continue
        m = re.fullmatch(r'(%s)(\{(.*)\})? (\S+)( -?\d+)?' % NAME, line)
        if not m:
            raise ValueError("%s: not a sample line: %r" % (where, line))
        name, lab, v = m.group(1), labels(m.group(3) or "", where), value(m.group(4))
        fam = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                fam = name[:-len(suffix)]
        if fam not in types or fam not in helps:
            raise ValueError("%s: %s has no HELP and TYPE before it" % (where, name))
        if fam in done or fam != current:
            raise ValueError("%s: %s is apart from the rest of its family" % (where, name))
        key = (name, tuple(sorted(lab.items())))
        if key in seen:
            raise ValueError("%s: the series %s%s twice" % (where, name, lab))
        seen.add(key)
        if types[fam] == "counter" and (v < 0 or math.isnan(v)):
            raise ValueError("%s: counter %s is %s" % (where, name, v))
        samples.append((name, lab, v, fam))
    # Histograms: per series, le ascending, counts cumulative, +Inf = _count.
    for fam, t in types.items():
        if t != "histogram":
            continue
        series = {}
        for name, lab, v, f in samples:
            if f != fam:
                continue
            base = tuple(sorted((k, x) for k, x in lab.items() if k != "le"))
            h = series.setdefault(base, {"b": [], "sum": None, "count": None})
            if name == fam + "_bucket":
                h["b"].append((value(lab["le"]), v))
            elif name == fam + "_sum":
                h["sum"] = v
            elif name == fam + "_count":
                h["count"] = v
        for base, h in series.items():
            les = [le for le, _ in h["b"]]
            if les != sorted(les) or not les or les[-1] != math.inf:
                raise ValueError("%s%s: buckets not ascending to +Inf" % (fam, dict(base)))
            counts = [c for _, c in h["b"]]
            if counts != sorted(counts):
                raise ValueError("%s%s: buckets not cumulative" % (fam, dict(base)))
            if h["count"] != counts[-1] or h["sum"] is None:
                raise ValueError("%s%s: _count is not the +Inf bucket, or no _sum" % (fam, dict(base)))
    return samples, types

text = open(sys.argv[2]).read()
try:
    samples, types = parse(text)
except ValueError as e:
    print(e)
    sys.exit(1)
if sys.argv[1] == "check":
    print("%d families, %d samples" % (len(types), len(samples)))
elif sys.argv[1] == "get":
    want = dict(a.split("=", 1) for a in sys.argv[4:])
    hits = [v for n, l, v, f in samples if n == sys.argv[3]
            and all(l.get(k) == x for k, x in want.items())]
    if len(hits) != 1:
        print("%d samples of %s%s" % (len(hits), sys.argv[3], want))
        sys.exit(1)
    v = hits[0]
    print(int(v) if v == int(v) else v)
EOF

# The parser itself, on text it must refuse.
parser_refuses() {
  printf '%b' "$2" >"$tmp/bad.txt"
  if $PY "$tmp/prom.py" check "$tmp/bad.txt" >/dev/null; then
    fail "the parser takes $1"
  fi
}
parser_refuses "a sample without TYPE" '# HELP a x\na 1\n'
parser_refuses "TYPE after the sample" '# HELP a x\na 1\n# TYPE a gauge\n'
parser_refuses "interleaved families" '# HELP a x\n# TYPE a gauge\na{x="1"} 1\n# HELP b x\n# TYPE b gauge\nb 1\na{x="2"} 1\n'
parser_refuses "a bad value" '# HELP a x\n# TYPE a gauge\na one\n'
parser_refuses "a bad label" '# HELP a x\n# TYPE a gauge\na{x=1} 1\n'
parser_refuses "a non-cumulative histogram" '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'

# ---------------------------------------------------------------- nodes
mkdir "$tmp/shared" "$tmp/registry" "$tmp/faults"
truncate -s 16M "$tmp/shared/disk100.img"

free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
MPORT=$(free_port)
M=http://127.0.0.1:$MPORT

# conf NODE PORT: a cluster node attached to port B
conf() {
  cat >"$tmp/$1.conf" <<EOF
[node]
name = $1

[listen]
address = 127.0.0.1:$2

[port B]
alloclass = 4
glob = $tmp/shared/disk*.img

[registry]
backend = dir
dir = $tmp/registry

[cluster]
local-socket = $tmp/$1-units.sock
state-file = $tmp/$1.state.json
request-timeout-ms = 1000
checker-interval-ms = 100
failback-ms = 500
devices = none
EOF
  if [ "$1" = ALPHA ]; then
    cat >>"$tmp/$1.conf" <<EOF
fault-dir = $tmp/faults

[control]
socket = $tmp/$1.ctl

[metrics]
listen = 127.0.0.1:$MPORT
EOF
  else
    printf '\n[control]\nsocket = %s\n' "$tmp/$1.ctl" >>"$tmp/$1.conf"
  fi
}

# start NODE: on a free NBD port (retried if taken); wait for its control
# socket to answer
start() {
  local n=$1
  for _ in 1 2 3 4 5; do
    conf "$n" "$(free_port)"
    "$altpathd" --config "$tmp/$n.conf" 2>"$tmp/$n.log" &
    pid[$n]=$!
    for _ in $(seq 100); do
      "$altpath" --socket "$tmp/$n.ctl" --timeout 1 ping >/dev/null 2>&1 \
        && return 0
      kill -0 "${pid[$n]}" 2>/dev/null || break
      sleep 0.1
    done
    wait "${pid[$n]}" 2>/dev/null
    grep -qi "address already in use\|port is in use" "$tmp/$n.log" || break
    [ "$n" = ALPHA ] && MPORT=$(free_port) && M=http://127.0.0.1:$MPORT
  done
  die "altpathd $n did not start"
}

# scrape FILE: GET /metrics into FILE; it must be a 200 that parses
scrape() {
  local code
  code=$(curl -s -m 10 -o "$1" -w '%{http_code}' "$M/metrics") || true
  [ "$code" = 200 ] || { echo "  (scrape: HTTP status '$code')"; return 1; }
  $PY "$tmp/prom.py" check "$1" >"$tmp/check.out" \
    || { echo "  (scrape does not parse: $(cat "$tmp/check.out"))"; return 1; }
}
# get FILE NAME [K=V]...: one sample's value
get() { $PY "$tmp/prom.py" get "$@"; }
# wait_metric NAME LABELS OP VALUE SECONDS: scrape until the sample
# compares so (OP: -eq, -ge, -gt)
wait_metric() {
  local got=
  for _ in $(seq $(($5 * 10))); do
    if scrape "$tmp/w.txt" 2>/dev/null; then
      # shellcheck disable=SC2086
      got=$(get "$tmp/w.txt" "$1" $2)
      [ -n "$got" ] && [ "$got" "$3" "$4" ] 2>/dev/null && return 0
    fi
    sleep 0.1
  done
  echo "  ($1{$2} is '$got', want $3 $4)"
  return 1
}

start ALPHA
start BETA
grep -q "metrics: http://127.0.0.1:$MPORT/metrics" "$tmp/ALPHA.log" \
  || die "ALPHA does not log its metrics address"

# ALPHA's unit has its direct path active and served:BETA standing by.
wait_metric altpath_path_state "device=$D path=served:BETA state=standby" \
  -eq 1 20 || die "ALPHA's $D has no served:BETA standing by"
wait_metric altpath_path_state "device=$D path=direct state=active" -eq 1 10 \
  || die "ALPHA's $D is not on its direct path"

# --------------------------------------------------------- first scrape
scrape "$tmp/s1.txt" || die "the first scrape"
pass "GET /metrics: 200, parses ($(cat "$tmp/check.out"))"
head=$(curl -s -m 10 -D - -o /dev/null "$M/metrics" | tr -d '\r')
grep -qi '^content-type: text/plain; version=0.0.4' <<<"$head" \
  || fail "Content-Type is not the text format 0.0.4: $head"

missing=
for m in "altpath_node_info node=ALPHA" "altpath_units" "altpath_served_exports" \
         "altpath_in_cluster" "altpath_registry_healthy backend=dir" \
         "altpath_cluster_configuration_errors" \
         "altpath_unit_state device=$D state=online" \
         "altpath_unit_ops_total device=$D op=read" \
         "altpath_unit_ops_total device=$D op=write" \
         "altpath_unit_ops_total device=$D op=flush" \
         "altpath_unit_read_bytes_total device=$D" \
         "altpath_unit_written_bytes_total device=$D" \
         "altpath_unit_errors_total device=$D" \
         "altpath_unit_switches_total device=$D type=automatic" \
         "altpath_unit_switches_total device=$D type=manual" \
         "altpath_unit_inflight device=$D" "altpath_unit_held device=$D" \
         "altpath_unit_last_switch_timestamp_seconds device=$D" \
         "altpath_unit_usable_paths device=$D" "altpath_unit_paths device=$D" \
         "altpath_unit_latency_seconds_count device=$D" \
         "altpath_unit_latency_seconds_sum device=$D" \
         "altpath_unit_latency_seconds_bucket device=$D le=+Inf" \
         "altpath_path_state device=$D path=direct kind=direct state=active" \
         "altpath_path_state device=$D path=served:BETA kind=served state=standby" \
         "altpath_path_ops_total device=$D path=direct op=write" \
         "altpath_path_read_bytes_total device=$D path=direct" \
         "altpath_path_errors_total device=$D path=direct" \
         "altpath_path_inflight device=$D path=served:BETA" \
         "altpath_path_probes_total device=$D path=served:BETA result=ok" \
         "altpath_path_latency_seconds_count device=$D path=direct" \
         "altpath_nbd_connections server=peers" \
         "altpath_nbd_connections server=local" \
         "altpath_nbd_connections_accepted_total server=local" \
         "altpath_nbd_connections_refused_total server=peers" \
         "altpath_nbd_sessions_total server=local"; do
  # shellcheck disable=SC2086
  get "$tmp/s1.txt" $m >/dev/null || missing="$missing [$m]"
done
[ -z "$missing" ] && pass "the node's, the unit's and its paths' metrics are there" \
  || fail "missing samples:$missing"
[ "$(get "$tmp/s1.txt" altpath_unit_state "device=$D" state=online)" = 1 ] \
  && [ "$(get "$tmp/s1.txt" altpath_unit_state "device=$D" state=offline)" = 0 ] \
  && [ "$(get "$tmp/s1.txt" altpath_registry_healthy)" = 1 ] \
  && [ "$(get "$tmp/s1.txt" altpath_in_cluster)" = 1 ] \
  && [ "$(get "$tmp/s1.txt" altpath_unit_usable_paths "device=$D")" = 2 ] \
  && [ "$(get "$tmp/s1.txt" altpath_served_exports)" = 1 ] \
  && pass "online, 2 usable paths, registry healthy, 1 served export" \
  || fail "unexpected values in $(grep -E 'unit_state|registry_healthy|usable|served_exports' "$tmp/s1.txt")"
# Buckets are in seconds: 8 µs to 33.554432 s, then +Inf.
grep -q "altpath_unit_latency_seconds_bucket{device=\"$D\",le=\"8e-06\"}" "$tmp/s1.txt" \
  && grep -q "altpath_unit_latency_seconds_bucket{device=\"$D\",le=\"33.554432\"}" "$tmp/s1.txt" \
  && pass "latency buckets in seconds (le=\"8e-06\" .. le=\"33.554432\", +Inf)" \
  || fail "latency bucket edges: $(grep -m3 'unit_latency_seconds_bucket' "$tmp/s1.txt")"

# ------------------------------------------------------------------ I/O
# 4 MiB written, then the whole unit (16 MiB) read back, through ALPHA's
# local socket.
head -c 4M /dev/urandom >"$tmp/data"
nbdcopy "$tmp/data" "$URI" 2>"$tmp/nbdcopy.err" \
  || die "nbdcopy to $URI: $(cat "$tmp/nbdcopy.err")"
nbdcopy "$URI" "$tmp/back" 2>"$tmp/nbdcopy.err" \
  || die "nbdcopy from $URI: $(cat "$tmp/nbdcopy.err")"
cmp -n 4194304 "$tmp/data" "$tmp/back" || fail "what was read back differs"
scrape "$tmp/s2.txt" || die "the scrape after I/O"
delta() {       # delta NAME [K=V]...: s2 - s1
  echo $(( $(get "$tmp/s2.txt" "$@") - $(get "$tmp/s1.txt" "$@") ))
}
dw=$(delta altpath_unit_ops_total "device=$D" op=write)
dr=$(delta altpath_unit_ops_total "device=$D" op=read)
dbw=$(delta altpath_unit_written_bytes_total "device=$D")
dbr=$(delta altpath_unit_read_bytes_total "device=$D")
dpw=$(delta altpath_path_written_bytes_total "device=$D" path=direct)
dc=$(delta altpath_unit_latency_seconds_count "device=$D")
echo "  after I/O: +$dw writes (+$dbw bytes), +$dr reads (+$dbr bytes), direct path +$dpw bytes written, latency count +$dc"
if [ "$dw" -ge 1 ] && [ "$dbw" -ge 4194304 ] && [ "$dr" -ge 1 ] \
   && [ "$dbr" -ge 4194304 ] && [ "$dpw" -ge 4194304 ] \
   && [ "$dc" -ge $((dw + dr)) ]; then
  pass "I/O moved the counters by at least what was done (4 MiB each way)"
else
  fail "the counters did not move as the I/O did"
fi
# The two nbdcopy runs were two sessions (or more: nbdcopy opens more
# connections to a multi-conn export) on the local exports, and BETA's
# served path to the disk is connected to ALPHA's server for peers.
da=$(delta altpath_nbd_connections_accepted_total server=local)
ds=$(delta altpath_nbd_sessions_total server=local)
if [ "$da" -ge 2 ] && [ "$ds" -ge 2 ] && [ "$ds" -le "$da" ] \
   && [ "$(get "$tmp/s2.txt" altpath_nbd_connections_refused_total server=local)" = 0 ] \
   && [ "$(get "$tmp/s2.txt" altpath_nbd_sessions_total server=peers)" -ge 1 ] \
   && wait_metric altpath_nbd_connections server=peers -ge 1 5 \
   && wait_metric altpath_nbd_connections server=local -eq 0 5; then
  pass "NBD connections: local +$da accepted, +$ds sessions, none left open; BETA connected to the server for peers"
else
  fail "NBD connection metrics: $(grep '^altpath_nbd' "$tmp/s2.txt" | tr '\n' ' ')"
fi

# ---------------------------------------------------- a path fault: EIO
sw0=$(get "$tmp/s2.txt" altpath_unit_switches_total "device=$D" type=automatic)
t0=$(date +%s)
: >"$tmp/faults/4-DKB100.eio"
nbdcopy "$tmp/data" "$URI" 2>"$tmp/nbdcopy.err" \
  || fail "I/O during the fault failed: $(cat "$tmp/nbdcopy.err")"
wait_metric altpath_unit_switches_total "device=$D type=automatic" -gt "$sw0" 10 \
  && wait_metric altpath_path_state "device=$D path=served:BETA state=active" -eq 1 5 \
  && pass "EIO on the direct path: the automatic switch counter moved, served:BETA is active" \
  || fail "no failover seen in the metrics"
scrape "$tmp/s3.txt" || die "the scrape after the fault"
[ "$(get "$tmp/s3.txt" altpath_path_state "device=$D" path=direct state=failed)" = 1 ] \
  && [ "$(get "$tmp/s3.txt" altpath_unit_usable_paths "device=$D")" = 1 ] \
  && [ "$(get "$tmp/s3.txt" altpath_unit_state "device=$D" state=online)" = 1 ] \
  && pass "the direct path shows failed, 1 usable path, the unit online" \
  || fail "after the fault: $(grep -E "path_state.*(failed|active)\"\} 1|usable" "$tmp/s3.txt")"
last=$(get "$tmp/s3.txt" altpath_unit_last_switch_timestamp_seconds "device=$D")
lasterr=$(get "$tmp/s3.txt" altpath_path_last_error_timestamp_seconds "device=$D" path=direct)
if $PY -c "import sys; sys.exit(not ($last >= $t0 - 1 and $lasterr >= $t0 - 1))"; then
  pass "last switch and the direct path's last error are timestamped (Unix seconds)"
else
  fail "timestamps: last switch $last, last error $lasterr, fault at $t0"
fi
pf=$(( $(get "$tmp/s3.txt" altpath_path_errors_total "device=$D" path=direct) \
     + $(get "$tmp/s3.txt" altpath_path_probes_total "device=$D" path=direct result=failed) ))
[ "$pf" -ge 1 ] && pass "the direct path's errors or failed probes count the EIO" \
  || fail "no error counted on the direct path"

rm -f "$tmp/faults/4-DKB100.eio"
sw1=$(get "$tmp/s3.txt" altpath_unit_switches_total "device=$D" type=automatic)
wait_metric altpath_path_state "device=$D path=direct state=active" -eq 1 15 \
  && wait_metric altpath_unit_switches_total "device=$D type=automatic" -gt "$sw1" 5 \
  && pass "failback to the direct path moved the switch counter again" \
  || fail "no failback seen in the metrics"

# A manual switch is counted as such.
sm0=$(get "$tmp/s3.txt" altpath_unit_switches_total "device=$D" type=manual)
"$altpath" --socket "$tmp/ALPHA.ctl" switch "$D" served:BETA >/dev/null \
  || fail "altpath switch"
wait_metric altpath_unit_switches_total "device=$D type=manual" -gt "$sm0" 5 \
  && wait_metric altpath_unit_pinned "device=$D" -eq 1 2 \
  && pass "altpath switch: the manual counter moved, the unit shows pinned" \
  || fail "the manual switch is not in the metrics"
"$altpath" --socket "$tmp/ALPHA.ctl" unpin "$D" >/dev/null || fail "altpath unpin"
wait_metric altpath_unit_pinned "device=$D" -eq 0 5 || fail "still pinned after unpin"

# ------------------------------------------------------- bad requests
status() {      # status CURL-ARGS...: the HTTP status curl got
  curl -s -m 10 -o /dev/null -w '%{http_code}' "$@"
}
[ "$(status -X POST -d x=1 "$M/metrics")" = 405 ] && pass "POST /metrics: 405" \
  || fail "POST /metrics is not 405"
allow=$(curl -s -m 10 -X PUT -D - -o /dev/null "$M/metrics" | tr -d '\r' | grep -i '^allow:')
[ "$allow" = "Allow: GET, HEAD" ] || fail "405 without 'Allow: GET, HEAD': '$allow'"
[ "$(status "$M/other")" = 404 ] && [ "$(status "$M/")" = 404 ] \
  && [ "$(status "$M/metricsx")" = 404 ] && pass "GET /other, /, /metricsx: 404" \
  || fail "another path is not 404"
[ "$(status "$M/metrics?x=1")" = 200 ] || fail "GET /metrics?x=1 is not 200"
hd=$(curl -s -m 10 -I "$M/metrics" | head -1 | tr -d '\r')
[[ $hd == "HTTP/1.1 200 OK" ]] && pass "HEAD /metrics: 200" || fail "HEAD: $hd"

# raw REQUEST-KIND: what a raw socket client gets (the status line, or
# what went wrong), with how long it took
cat >"$tmp/raw.py" <<'EOF'
import socket, sys, time
port, kind = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=15)
t = time.monotonic()
try:
    if kind == "huge":          # a 1 MB header
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    elif kind == "garbage":
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    elif kind == "partial":     # a head that never ends
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    elif kind == "lax":         # bare \n line ends
        s.sendall(b"GET /metrics HTTP/1.0\n\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    print(data.split(b"\r\n", 1)[0].decode("latin-1"), "%.1f" % (time.monotonic() - t))
except OSError as e:
    print("error", type(e).__name__, "%.1f" % (time.monotonic() - t))
EOF
raw() { $PY "$tmp/raw.py" "$MPORT" "$1"; }
r=$(raw huge)
[[ $r == "HTTP/1.1 431 "* ]] && pass "a 1 MB header: 431 ($r s)" || fail "a 1 MB header: '$r'"
r=$(raw garbage)
[[ $r == "HTTP/1.1 400 "* ]] && pass "garbage: 400" || fail "garbage: '$r'"
r=$(raw lax)
[[ $r == "HTTP/1.1 200 "* ]] && pass "HTTP/1.0 with bare newlines: 200" || fail "lax request: '$r'"

# A silent client and a slow one do not hold up a scrape; the slow one is
# told 408 after the read timeout (5 s).
$PY -c 'import socket, time
s = socket.create_connection(("127.0.0.1", '"$MPORT"')); time.sleep(8)' &
silent=$!
bg+=($!)
raw partial >"$tmp/partial.out" &
bg+=($!)
sleep 0.5
t=$(date +%s%N)
scrape "$tmp/s4.txt" || fail "a scrape beside a silent client"
ms=$(( ($(date +%s%N) - t) / 1000000 ))
[ "$ms" -lt 2000 ] && pass "a scrape beside a silent and a slow client: ${ms} ms" \
  || fail "a scrape beside a silent client took ${ms} ms"
wait "${bg[-1]}"
r=$(cat "$tmp/partial.out")
[[ $r == "HTTP/1.1 408 "* ]] && pass "a head that never ends: 408 after ${r##* } s" \
  || fail "a head that never ends: '$r'"
# The silent client goes too (its slot is free once the daemon sees it
# close), so that the next check counts slots from zero.
kill "$silent" 2>/dev/null
wait "$silent" 2>/dev/null
sleep 0.5

# A full house: 40 silent connections; beyond the cap (16) they are told
# 503 at once, a scrape meanwhile too, and scrapes work again once the
# silent ones time out (5 s).
$PY - "$MPORT" >"$tmp/flood.out" <<'EOF'
import socket, sys, time
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
busy, deadline = set(), time.monotonic() + 3
while len(busy) < 24 and time.monotonic() < deadline:
    for i, s in enumerate(socks):
        s.setblocking(False)
        try:
            if i not in busy and s.recv(100).startswith(b"HTTP/1.1 503"):
                busy.add(i)
        except (BlockingIOError, ConnectionError):
            pass
    time.sleep(0.05)
c = socket.create_connection(("127.0.0.1", port), timeout=5)
c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
print(len(busy), c.recv(100).split(b"\r\n")[0].decode())
EOF
read -r busy code <"$tmp/flood.out"
[ "${busy:-0}" -ge 20 ] && [[ $code == "HTTP/1.1 503 "* ]] \
  && pass "40 silent clients: $busy told 503 at once, a scrape meanwhile 503" \
  || fail "40 silent clients: '$(cat "$tmp/flood.out")'"
wait_metric altpath_units "" -eq 1 10 \
  && pass "scrapes work again once the silent clients are gone" \
  || fail "no scrape after the silent clients"

kill -0 "${pid[ALPHA]}" 2>/dev/null && pass "ALPHA lives on after the bad requests" \
  || die "ALPHA died"
"$altpath" --socket "$tmp/ALPHA.ctl" --timeout 5 ping >/dev/null \
  || fail "ALPHA's control socket does not answer"

# ------------------------------------------------ [metrics] configuration
check_conf() {  # check_conf BODY: --check-config of ALPHA's file with BODY as [metrics]
  sed '/^\[metrics\]/,$d' "$tmp/ALPHA.conf" >"$tmp/m.conf"
  printf '[metrics]\n%b' "$1" >>"$tmp/m.conf"
  "$altpathd" --check-config --config "$tmp/m.conf" 2>&1
}
out=$(check_conf 'listen = 0.0.0.0:9469\n')
[ $? -ne 0 ] && grep -q "line .*key 'listen': 0.0.0.0 is not a loopback address.*allow-remote = yes" <<<"$out" \
  && pass "listen = 0.0.0.0 refused without allow-remote" \
  || fail "listen = 0.0.0.0 without allow-remote: $out"
out=$(check_conf 'listen = 0.0.0.0:9469\nallow-remote = yes\n')
[ $? -eq 0 ] && grep -q "^metrics http://0.0.0.0:9469/metrics, remote scrapers allowed" <<<"$out" \
  && pass "listen = 0.0.0.0 with allow-remote = yes is valid" \
  || fail "allow-remote = yes: $out"
out=$(check_conf '')
[ $? -eq 0 ] && grep -q "^metrics http://127.0.0.1:9469/metrics$" <<<"$out" \
  && pass "an empty [metrics] listens on 127.0.0.1:9469" || fail "default: $out"
out=$(check_conf 'listen = [::1]\n')
[ $? -eq 0 ] && grep -q "^metrics http://\[::1\]:9469/metrics$" <<<"$out" \
  || fail "listen = [::1]: $out"
for bad in 'listen = unix:/tmp/m.sock' 'listen = 127.0.0.1:0' 'listen = 127.0.0.1:x' \
           'allow-remote = maybe' 'port = 1'; do
  out=$(check_conf "$bad\n")
  [ $? -ne 0 ] && grep -q "line [0-9]*, key" <<<"$out" \
    || fail "'$bad' is not refused with its line: $out"
done
sed '/^\[metrics\]/,$d' "$tmp/ALPHA.conf" >"$tmp/m.conf"
"$altpathd" --check-config --config "$tmp/m.conf" | grep -q "^metrics none" \
  || fail "no [metrics]: --check-config does not say 'metrics none'"

# ----------------------------------------------------------------- stop
stop() {
  local n=$1 rc
  kill -TERM "${pid[$n]}"
  for _ in $(seq 300); do
    kill -0 "${pid[$n]}" 2>/dev/null || break
    sleep 0.1
  done
  wait "${pid[$n]}"; rc=$?
  unset "pid[$n]"
  [ "$rc" -eq 0 ] || fail "altpathd $n exited with status $rc"
}
stop ALPHA
stop BETA
[ "$(status "$M/metrics")" = 000 ] && pass "ALPHA stopped cleanly; nothing listens on the metrics port" \
  || fail "something still answers on the metrics port"
if grep -E "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error" "$tmp"/*.log; then
  fail "a sanitizer complained"
fi

[ $failures -eq 0 ] || { die "$failures check(s) failed"; }
echo "all metrics checks passed"
exit 0
