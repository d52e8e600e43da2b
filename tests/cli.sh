#!/usr/bin/env bash
# cli.sh — altpath, the command line, against real altpathd nodes over
# their control sockets (docs/cli.md):
#
#   ALPHA and BETA: one cluster (registry: a directory), both attached to
#   port B ($4$DKB) — two image files in /dev/shm — so ALPHA's units have
#   a direct path and a served one (served:BETA).  GAMMA: no [registry],
#   a node-local disk, its socket open to group nogroup.
#
# Every command, with and without --json (each JSON line parsed); manual
# choices that stick (a pinned path is not undone by failback, a disabled
# path stays disabled until enabled); `altpath watch` sees the switch and
# exits 0 on SIGINT; errors are one line with the documented exit status
# (unknown device or path 1, usage 2, no daemon 3 naming the socket,
# permission 4, timeout 5 on a daemon stopped with SIGSTOP); garbage,
# over-long lines and many clients at once on the socket leave the daemon
# serving.
set -uo pipefail

BUILD=${BUILD:-$(pwd)/build}
altpathd=$BUILD/altpathd
altpath=$BUILD/altpath
PY=/usr/bin/python3
for f in "$altpathd" "$altpath"; do
  if [ ! -x "$f" ]; then
    echo "SKIP: $f is not built"
    exit 77
  fi
done
if [ ! -x $PY ]; then
  echo "SKIP: $PY is missing"
  exit 77
fi

tmp=$(mktemp -d /dev/shm/altpath-cli.XXXXXX)
declare -A pid=()
bg=()
cleanup() {
  for p in "${bg[@]}" "${pid[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -CONT "$p" 2>/dev/null
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
  for n in alpha beta gamma; do
    [ -f "$tmp/$n.log" ] || continue
    echo "----- $n's log (last 40 lines) -----"
    tail -n 40 "$tmp/$n.log"
  done
  exit 1
}

D='$4$DKB100'                   # the device most checks use
A=("$altpath" --socket "$tmp/alpha.ctl")
ctl_alpha=$tmp/alpha.ctl

# run NAME ARGS...: run a command, keeping stdout, stderr and the status
# in $tmp/NAME.{out,err} and $rc.
rc=0
run() {
  local name=$1
  shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
  rc=$?
}
# is_json FILE: every line of FILE is a JSON object (at least one line)
is_json() {
  [ -s "$1" ] && $PY -c '
import json, sys
n = 0
for line in open(sys.argv[1]):
    assert isinstance(json.loads(line), dict); n += 1
assert n > 0' "$1" 2>/dev/null
}
# jq_py FILE EXPR: evaluate EXPR with d = the JSON in FILE
jq_py() {
  $PY -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}
# one_line NAME: the command wrote exactly one line on stderr, nothing on
# stdout
one_line() {
  [ "$(wc -l <"$tmp/$1.err")" -eq 1 ] && [ ! -s "$tmp/$1.out" ]
}

# active DEVICE: "PATH PINNED STATE-OF-direct" of ALPHA's unit
active() {
  "${A[@]}" --timeout 5 --json show device "$1" 2>/dev/null | $PY -c '
import json, sys
d = json.load(sys.stdin)["device"]
a = next((p for p in d["paths"] if p["active"]), None)
s = {p["name"]: p["state"] for p in d["paths"]}
print(a["name"] if a else "none", a["pinned"] if a else False, s.get("direct", "-"))' 2>/dev/null
}
# wait_active DEVICE WANT SECONDS: until `active` prints WANT (a glob)
wait_active() {
  local got=
  for _ in $(seq $(($3 * 10))); do
    got=$(active "$1")
    # shellcheck disable=SC2053
    [[ $got == $2 ]] && return 0
    sleep 0.1
  done
  echo "  (unit $1 is '$got', not '$2')"
  return 1
}

# wait_up DEVICE N SECONDS: until N of its paths are up (active or
# standby)
wait_up() {
  local got=
  for _ in $(seq $(($3 * 10))); do
    got=$("${A[@]}" --timeout 5 --json show device "$1" 2>/dev/null | $PY -c '
import json, sys
d = json.load(sys.stdin)["device"]
print(sum(p["state"] in ("active", "standby") for p in d["paths"]))' 2>/dev/null)
    [ "$got" = "$2" ] && return 0
    sleep 0.1
  done
  echo "  (unit $1 has $got paths up, not $2)"
  return 1
}

# ---------------------------------------------------------------- nodes
mkdir "$tmp/shared" "$tmp/gamma" "$tmp/registry"
truncate -s 16M "$tmp/shared/disk100.img" "$tmp/shared/disk101.img" \
  "$tmp/gamma/disk0.img"

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
failback-ms = 300
devices = none

[control]
socket = $tmp/$1.ctl
EOF
}

# start NODE: start it (on a free port: retry if taken); wait for its
# control socket to answer
start() {
  local n=$1
  for _ in 1 2 3 4 5; do
    if [ "$n" != gamma ]; then conf "$n" $((20000 + RANDOM % 40000)); fi
    "$altpathd" --config "$tmp/$n.conf" 2>"$tmp/$n.log" &
    pid[$n]=$!
    for _ in $(seq 100); do
      "$altpath" --socket "$tmp/$n.ctl" --timeout 1 ping >/dev/null 2>&1 \
        && return 0
      kill -0 "${pid[$n]}" 2>/dev/null || break
      sleep 0.1
    done
    wait "${pid[$n]}" 2>/dev/null
    grep -qi "address already in use" "$tmp/$n.log" || break
  done
  die "altpathd $n did not start"
}

cat >"$tmp/gamma.conf" <<EOF
[node]
name = gamma

[listen]
address = unix:$tmp/gamma-nbd.sock

[port A]
glob = $tmp/gamma/disk*.img

[control]
socket = $tmp/gamma.ctl
EOF
if [ "$(id -u)" -eq 0 ] && getent group nogroup >/dev/null; then
  printf 'group = nogroup\n' >>"$tmp/gamma.conf"
fi

start alpha
start beta
start gamma
pass "alpha, beta and gamma answer on their control sockets"

# ALPHA's units get their served path once BETA is known.
ok=
for _ in $(seq 150); do
  run paths "${A[@]}" --json show device "$D"
  if [ $rc -eq 0 ] && [ "$(jq_py "$tmp/paths.out" \
       'sorted(p["name"] for p in d["device"]["paths"])')" \
       = "['direct', 'served:BETA']" ]; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || die "$D on alpha never got its path served:BETA"
wait_active "$D" "direct False active" 10 \
  || die "$D on alpha is not on its direct path with served:BETA standing by"
pass "$D on alpha: direct (current) and served:BETA (standby)"

# ------------------------------------------------------------ usage, help
run help "$altpath" --help
missing=
for w in "show devices" "show device NAME" "--full" "show cluster" \
         "switch NAME PATH" "unpin NAME" "path disable NAME PATH" \
         "path enable NAME PATH" "rescan" "watch" "ping" "--socket" \
         "--json" "--timeout" "Exit status" "/run/altpath/control.sock"; do
  grep -qF -- "$w" "$tmp/help.out" || missing="$missing '$w'"
done
if [ $rc -eq 0 ] && [ -z "$missing" ]; then
  pass "--help names every command, option and the exit statuses"
else
  fail "--help: rc $rc, missing:$missing"
fi
for args in "" "frobnicate" "show" "show device" "show devices x" \
            "switch $D" "path disable $D" "path reenable $D direct" \
            "--timeout abc ping" "--timeout 0 ping" "--full show devices" \
            "--bogus ping" "unpin"; do
  # shellcheck disable=SC2086
  run usage "$altpath" $args
  if [ $rc -ne 2 ] || ! grep -q "^altpath: " "$tmp/usage.err"; then
    fail "'altpath $args': rc $rc (want 2): $(head -n 1 "$tmp/usage.err")"
  fi
done
pass "bad command lines: exit 2 with a message"

# ------------------------------------------------------------- show ...
run sd "${A[@]}" show devices
if [ $rc -eq 0 ] && head -n 1 "$tmp/sd.out" | grep -q "^DEVICE *STATE *PATH *PATHS *OPS *ERRORS$" \
   && grep -qE '^\$4\$DKB100 +online +direct +2/2 +[0-9]+ +0$' "$tmp/sd.out" \
   && grep -qE '^\$4\$DKB101 +online +direct +2/2 ' "$tmp/sd.out"; then
  pass "show devices: a table of name, state, current path, paths up/total, ops, errors"
else
  fail "show devices (rc $rc):"; cat "$tmp/sd.out" "$tmp/sd.err"
fi
run sdj "${A[@]}" --json show devices
if [ $rc -eq 0 ] && is_json "$tmp/sdj.out" \
   && [ "$(jq_py "$tmp/sdj.out" '[u["name"] for u in d["devices"]] == ["$4$DKB100", "$4$DKB101"] and d["ok"] and d["version"] == 1')" = True ]; then
  pass "show devices --json"
else
  fail "show devices --json (rc $rc): $(cat "$tmp/sdj.out" "$tmp/sdj.err")"
fi

# A write, so that the counters move (through the node's own unit, on its
# local NBD socket; skipped without nbdcopy).
if command -v nbdcopy >/dev/null; then
  head -c 1048576 /dev/urandom >"$tmp/data"
  nbdcopy "$tmp/data" "nbd+unix:///%244%24DKB100?socket=$tmp/alpha-units.sock" \
    2>/dev/null || fail "nbdcopy to $D on alpha's local socket"
fi

run sdev "${A[@]}" show device '$4$dkb100'     # names ignore case
if [ $rc -eq 0 ] && grep -q "^\$4\$DKB100 on node ALPHA: online" "$tmp/sdev.out" \
   && grep -qE "^ *direct +direct +active .*current, preferred$" "$tmp/sdev.out" \
   && grep -qE "^ *served:BETA +served via BETA +standby " "$tmp/sdev.out"; then
  pass "show device: each path with its kind (served via BETA), state, markers"
else
  fail "show device (rc $rc):"; cat "$tmp/sdev.out" "$tmp/sdev.err"
fi
run sfull "${A[@]}" show device "$D" --full
missing=
for w in "Current path" "Preferred path" "Operations" "Bytes" "Errors" \
         "Latency" "p50" "p99" "Switches" "automatic" "manual" "Last switch" \
         "Path direct (direct)" "Path served:BETA (served via BETA)" \
         "Last error" "Probes"; do
  grep -qF -- "$w" "$tmp/sfull.out" || missing="$missing '$w'"
done
if [ $rc -eq 0 ] && [ -z "$missing" ]; then
  pass "show device --full: counters, last error, latencies, switches per path"
else
  fail "show device --full (rc $rc) lacks:$missing"; cat "$tmp/sfull.out"
fi
run sdevj "${A[@]}" --json show device "$D" --full
if [ $rc -eq 0 ] && is_json "$tmp/sdevj.out" \
   && [ "$(jq_py "$tmp/sdevj.out" 'd["device"]["name"] == "$4$DKB100" and len(d["device"]["paths"]) == 2 and "latency_p99_us" in d["device"]["counters"]')" = True ]; then
  pass "show device --json"
else
  fail "show device --json (rc $rc): $(cat "$tmp/sdevj.out")"
fi

run sc "${A[@]}" show cluster
if [ $rc -eq 0 ] && grep -q "registry dir: healthy" "$tmp/sc.out" \
   && grep -qE "^ *ALPHA " "$tmp/sc.out" && grep -qE "^ *BETA " "$tmp/sc.out" \
   && grep -qE "^ *\\\$4\\\$DKB +attached by +ALPHA, BETA" "$tmp/sc.out" \
   && grep -qE "^ *\\\$4\\\$DKB100 .*served by +ALPHA, BETA" "$tmp/sc.out" \
   && grep -q "Configuration errors: none" "$tmp/sc.out"; then
  pass "show cluster: nodes, shared port and who attaches it, served disks, registry"
else
  fail "show cluster (rc $rc):"; cat "$tmp/sc.out" "$tmp/sc.err"
fi
run scj "${A[@]}" --json show cluster
if [ $rc -eq 0 ] && is_json "$tmp/scj.out" \
   && [ "$(jq_py "$tmp/scj.out" 'd["in_cluster"] and sorted(n["name"] for n in d["cluster"]["nodes"]) == ["ALPHA", "BETA"]')" = True ]; then
  pass "show cluster --json"
else
  fail "show cluster --json (rc $rc): $(cat "$tmp/scj.out")"
fi
run gc "$altpath" --socket "$tmp/gamma.ctl" show cluster
run gcj "$altpath" --socket "$tmp/gamma.ctl" --json show cluster
if [ $rc -eq 0 ] && grep -q "^node GAMMA is not in a cluster" "$tmp/gc.out" \
   && [ "$(jq_py "$tmp/gcj.out" 'd["in_cluster"]')" = False ]; then
  pass "show cluster on a node without [registry]: not in a cluster"
else
  fail "show cluster on gamma: $(cat "$tmp/gc.out" "$tmp/gcj.out")"
fi
run gd "$altpath" --socket "$tmp/gamma.ctl" show devices
if [ $rc -eq 0 ] && grep -qE '^GAMMA\$DKA0 +online +direct:' "$tmp/gd.out"; then
  pass "show devices on gamma: its served disk's unit"
else
  fail "show devices on gamma: $(cat "$tmp/gd.out" "$tmp/gd.err")"
fi

run ping "${A[@]}" ping
run pingj "${A[@]}" --json ping
if [ $rc -eq 0 ] && grep -q "on node ALPHA answers on $ctl_alpha" "$tmp/ping.out" \
   && is_json "$tmp/pingj.out"; then
  pass "ping"
else
  fail "ping: $(cat "$tmp/ping.out" "$tmp/pingj.out")"
fi

# ---------------------------------------------------- watch; manual choices
"${A[@]}" watch >"$tmp/watch.out" 2>"$tmp/watch.err" &
watch_pid=$!
bg+=("$watch_pid")
"${A[@]}" --json watch >"$tmp/watchj.out" 2>"$tmp/watchj.err" &
watchj_pid=$!
bg+=("$watchj_pid")
for _ in $(seq 50); do
  grep -q "watching the devices of node ALPHA" "$tmp/watch.err" \
    && grep -q '"watching":true' "$tmp/watchj.out" && break
  sleep 0.1
done
grep -q '"watching":true' "$tmp/watchj.out" || fail "watch did not start"

run sw "${A[@]}" switch "$D" served:BETA
if [ $rc -eq 0 ] && grep -q "switched to served:BETA and pinned" "$tmp/sw.out" \
   && wait_active "$D" "served:BETA True standby" 5; then
  pass "switch $D served:BETA: on it, pinned"
else
  fail "switch (rc $rc): $(cat "$tmp/sw.out" "$tmp/sw.err")"
fi
sleep 2                         # several failback intervals (300 ms)
if [ "$(active "$D")" = "served:BETA True standby" ]; then
  pass "the pinned path stays: 2 s later failback has not undone it"
else
  fail "the pin did not stick: $(active "$D")"
fi
# The watchers saw the switch, as it happened.
for _ in $(seq 30); do
  grep -q "switched direct -> served:BETA" "$tmp/watch.out" && break
  sleep 0.1
done
if grep -qE "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+  \\\$4\\\$DKB100  switched direct -> served:BETA \(operator switch\)" "$tmp/watch.out"; then
  pass "watch: '$(grep -m1 "switched direct -> served:BETA" "$tmp/watch.out")'"
else
  fail "watch did not show the switch:"; cat "$tmp/watch.out" "$tmp/watch.err"
fi
if is_json "$tmp/watchj.out" && $PY -c '
import json, sys
ev = [json.loads(l).get("event") for l in open(sys.argv[1])]
assert any(e and e["type"] == "switch" and e["device"] == "$4$DKB100"
           and e["path"] == "served:BETA" and e["from_path"] == "direct"
           and e["time_unix_ms"] > 1600000000000 for e in ev)' "$tmp/watchj.out"; then
  pass "watch --json: one JSON object per line, the switch among them"
else
  fail "watch --json:"; cat "$tmp/watchj.out"
fi

run unpin "${A[@]}" unpin "$D"
if [ $rc -eq 0 ] && wait_active "$D" "direct False active" 5; then
  pass "unpin: failback returns $D to direct"
else
  fail "unpin (rc $rc): $(cat "$tmp/unpin.out" "$tmp/unpin.err")"
fi

wait_up "$D" 2 10 || fail "$D: its paths are not both up"
run dis "${A[@]}" path disable "$D" direct
if [ $rc -eq 0 ] && wait_active "$D" "served:BETA False disabled" 5; then
  pass "path disable $D direct: the unit leaves it"
else
  fail "path disable (rc $rc): $(cat "$tmp/dis.out" "$tmp/dis.err")"
fi
sleep 2
if [ "$(active "$D")" = "served:BETA False disabled" ]; then
  pass "the disabled path stays disabled (2 s later, failback 300 ms)"
else
  fail "the disabled path did not stay so: $(active "$D")"
fi
run last "${A[@]}" path disable "$D" served:BETA
if [ $rc -eq 1 ] && one_line last && grep -q "last usable path" "$tmp/last.err"; then
  pass "disabling the last usable path: refused, exit 1: $(cat "$tmp/last.err")"
else
  fail "disable the last path: rc $rc: $(cat "$tmp/last.out" "$tmp/last.err")"
fi
run en "${A[@]}" path enable "$D" direct
if [ $rc -eq 0 ] && wait_active "$D" "direct False active" 5; then
  pass "path enable $D direct: back on direct"
else
  fail "path enable (rc $rc): $(cat "$tmp/en.out" "$tmp/en.err")"
fi
# The same through --json, each once the unit has settled from the one
# before (both paths up).
ok=1
for step in "switch $D served:BETA|served:BETA True standby" \
            "unpin $D|direct False active" \
            "path disable $D direct|served:BETA False disabled" \
            "path enable $D direct|direct False active"; do
  c=${step%|*}
  [ "$c" = "path enable $D direct" ] || wait_up "$D" 2 10 \
    || fail "$D: its paths are not both up before '$c'"
  # shellcheck disable=SC2086
  run cj "${A[@]}" --json $c
  if [ $rc -ne 0 ] || ! is_json "$tmp/cj.out" \
     || [ "$(jq_py "$tmp/cj.out" 'd["ok"] and d["device"]["name"]')" != '$4$DKB100' ] \
     || ! wait_active "$D" "${step#*|}" 5; then
    fail "--json $c (rc $rc): $(cat "$tmp/cj.out" "$tmp/cj.err")"; ok=
  fi
done
[ -n "$ok" ] && pass "switch, unpin, path disable/enable with --json"

kill -INT "$watch_pid" "$watchj_pid"
wait "$watch_pid"; r1=$?
wait "$watchj_pid"; r2=$?
if [ $r1 -eq 0 ] && [ $r2 -eq 0 ]; then
  pass "watch exits 0 on SIGINT"
else
  fail "watch on SIGINT: exit $r1 and $r2"
fi

# ------------------------------------------- choices kept across restarts
# The operator's disabled paths and pins are kept in [cluster] state-file:
# a restart of altpathd must not put a path under repair back into use.
sf=$tmp/alpha.state.json
# state_is EXPR: the state file holds what EXPR (python, d = its JSON) says
state_is() { [ "$(jq_py "$sf" "$1")" = True ]; }
# restart_alpha: SIGTERM (exit 0), start again on the same files
restart_alpha() {
  kill -TERM "${pid[alpha]}"
  wait "${pid[alpha]}" || fail "alpha exited $? on SIGTERM"
  start alpha
}
# direct_untouched: ALPHA's direct path of $D was neither probed nor used
direct_untouched() {
  "${A[@]}" --json show device "$D" 2>/dev/null | $PY -c '
import json, sys
d = json.load(sys.stdin)["device"]
p = next(p for p in d["paths"] if p["name"] == "direct")
c = p["counters"]
assert p["state"] == "disabled", p["state"]
assert p["probes_ok"] + p["probes_failed"] == 0, "probed"
assert c["reads"] + c["writes"] + c["flushes"] + c["trims"] + c["zeroes"] == 0, "used"' 2>&1
}

wait_up "$D" 2 10 || fail "$D: its paths are not both up before the restart test"
run kd "${A[@]}" path disable "$D" direct
run kp "${A[@]}" switch "$D" served:BETA
if [ $rc -eq 0 ] && state_is 'd["node"] == "ALPHA" and d["version"] == 1 and d["units"]["$4$DKB100"] == {"pinned": "served:BETA", "disabled": ["direct"]}'; then
  pass "path disable and switch are written to the state file"
else
  fail "state file after disable and switch: $(cat "$sf" "$tmp/kd.err" "$tmp/kp.err" 2>&1)"
fi
restart_alpha
out=
if wait_active "$D" "served:BETA True disabled" 10 && out=$(direct_untouched); then
  pass "after a restart: direct still disabled (never probed nor used), served:BETA still pinned"
else
  fail "after a restart: $(active "$D") $out"
fi
grep -q "path direct joins disabled, as the operator left it" "$tmp/alpha.log" \
  || fail "alpha's log does not say the direct path joined disabled"
run ku "${A[@]}" unpin "$D"
run ke "${A[@]}" path enable "$D" direct
if [ $rc -eq 0 ] && wait_active "$D" "direct False active" 10 \
   && state_is 'd["units"] == {}'; then
  pass "unpin and path enable: back on direct, the state file has no choice left"
else
  fail "unpin/enable after the restart (rc $rc): $(active "$D") $(cat "$sf" "$tmp/ke.err")"
fi

# A choice that cannot be written: the command takes effect, says it is
# not kept, and exits 1; run again once the cause is gone, it is kept.
mkdir "$sf.new"                 # where the new file is written first
run kf "${A[@]}" path disable "$D" direct
if [ $rc -eq 1 ] && one_line kf && grep -q "could not keep it for its next start" "$tmp/kf.err" \
   && grep -qF "$sf.new" "$tmp/kf.err" && wait_active "$D" "served:BETA False disabled" 5 \
   && state_is 'd["units"] == {}'; then
  pass "state file not writable: disabled now, exit 1: $(cat "$tmp/kf.err")"
else
  fail "unwritable state file: rc $rc: $(cat "$tmp/kf.out" "$tmp/kf.err")"
fi
rmdir "$sf.new"
run kg "${A[@]}" path disable "$D" direct
if [ $rc -eq 0 ] && state_is 'd["units"]["$4$DKB100"]["disabled"] == ["direct"]'; then
  pass "the same command again once it can be written: kept"
else
  fail "disable again: rc $rc: $(cat "$tmp/kg.err" "$sf")"
fi
run kh "${A[@]}" path enable "$D" direct
wait_active "$D" "direct False active" 10 || fail "$D did not go back to direct"

# A disabled path that leaves (BETA stops): show device still lists it as
# disabled; enabling it while it is away is allowed, and it joins enabled.
wait_up "$D" 2 10 || fail "$D: its paths are not both up before disabling served:BETA"
run kb "${A[@]}" path disable "$D" served:BETA
kill -TERM "${pid[beta]}"
wait "${pid[beta]}" || fail "beta exited $? on SIGTERM"
gone=
for _ in $(seq 100); do
  "${A[@]}" show device "$D" >"$tmp/absent.out" 2>&1
  grep -q "Disabled, not here now: served:BETA" "$tmp/absent.out" && { gone=1; break; }
  sleep 0.1
done
if [ $rc -eq 0 ] && [ -n "$gone" ]; then
  pass "served:BETA disabled, then BETA stopped: show device lists it as disabled, not here now"
else
  fail "absent disabled path: rc $rc: $(cat "$tmp/kb.err" "$tmp/absent.out")"
fi
run ka "${A[@]}" path enable "$D" served:BETA
if [ $rc -eq 0 ] && grep -q "it is not here now, and joins enabled" "$tmp/ka.out" \
   && state_is 'd["units"] == {}'; then
  pass "enabling it while it is away: exit 0, it will join enabled: $(cat "$tmp/ka.out")"
else
  fail "enable an absent path: rc $rc: $(cat "$tmp/ka.out" "$tmp/ka.err")"
fi
start beta
wait_up "$D" 2 20 && pass "BETA back: served:BETA joins enabled, both paths up" \
  || fail "served:BETA did not come back up"

# ---------------------------------------------------------------- rescan
truncate -s 16M "$tmp/shared/disk102.img"
run rs "${A[@]}" rescan
run rsj "${A[@]}" --json rescan
ok=
for _ in $(seq 50); do
  "${A[@]}" show devices 2>/dev/null | grep -q '^\$4\$DKB102 ' && { ok=1; break; }
  sleep 0.1
done
if [ $rc -eq 0 ] && grep -q "^rescan done: node ALPHA has" "$tmp/rs.out" \
   && is_json "$tmp/rsj.out" && [ -n "$ok" ]; then
  pass "rescan: \$4\$DKB102 appears"
else
  fail "rescan (rc $rc): $(cat "$tmp/rs.out" "$tmp/rs.err")"
fi

# ---------------------------------------------------------------- errors
run e1 "${A[@]}" show device '$4$DKB999'
if [ $rc -eq 1 ] && one_line e1 && grep -qF "'\$4\$DKB999'" "$tmp/e1.err"; then
  pass "unknown device: exit 1: $(cat "$tmp/e1.err")"
else
  fail "unknown device: rc $rc: $(cat "$tmp/e1.out" "$tmp/e1.err")"
fi
run e2 "${A[@]}" switch "$D" served:NOBODY
if [ $rc -eq 1 ] && one_line e2 && grep -qF "'served:NOBODY'" "$tmp/e2.err" \
   && grep -qF "direct and served:BETA" "$tmp/e2.err"; then
  pass "unknown path: exit 1: $(cat "$tmp/e2.err")"
else
  fail "unknown path: rc $rc: $(cat "$tmp/e2.out" "$tmp/e2.err")"
fi
run e2j "${A[@]}" --json path enable "$D" nosuch
if [ $rc -eq 1 ] && [ "$(jq_py "$tmp/e2j.out" 'd["ok"] is False and d["code"] == "ENOENT" and "nosuch" in d["error"]')" = True ]; then
  pass "unknown path with --json: {\"ok\":false,\"code\":\"ENOENT\",...}"
else
  fail "unknown path --json: rc $rc: $(cat "$tmp/e2j.out")"
fi
run e3 "$altpath" --socket "$tmp/nothere.sock" show devices
if [ $rc -eq 3 ] && one_line e3 && grep -qF "$tmp/nothere.sock" "$tmp/e3.err"; then
  pass "no daemon: exit 3 naming the socket: $(cat "$tmp/e3.err")"
else
  fail "no daemon: rc $rc: $(cat "$tmp/e3.out" "$tmp/e3.err")"
fi
run e3j "$altpath" --socket "$tmp/nothere.sock" --json show devices
if [ $rc -eq 3 ] && is_json "$tmp/e3j.out" && [ ! -s "$tmp/e3j.err" ]; then
  pass "no daemon with --json: the error as JSON on stdout"
else
  fail "no daemon --json: rc $rc: $(cat "$tmp/e3j.out" "$tmp/e3j.err")"
fi

# Permission: root only (and gamma's group).
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
  nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  run p1 "${nobody[@]}" "${A[@]}" show devices
  if [ $rc -eq 4 ] && one_line p1 && grep -q "permission denied" "$tmp/p1.err"; then
    pass "a user who is not root: exit 4: $(cat "$tmp/p1.err")"
  else
    fail "non-root: rc $rc: $(cat "$tmp/p1.out" "$tmp/p1.err")"
  fi
  # With the directory and the socket opened up, altpathd's own check
  # (SO_PEERCRED) still refuses.
  chmod 755 "$tmp"
  chmod 666 "$ctl_alpha"
  run p2 "${nobody[@]}" "${A[@]}" show devices
  chmod 660 "$ctl_alpha"
  if [ $rc -eq 4 ] && one_line p2 && grep -q "root only" "$tmp/p2.err" \
     && grep -q "uid 65534 .* refused" "$tmp/alpha.log"; then
    pass "socket mode opened: altpathd refuses uid 65534 itself: $(cat "$tmp/p2.err")"
  else
    fail "SO_PEERCRED check: rc $rc: $(cat "$tmp/p2.out" "$tmp/p2.err")"
  fi
  # gamma admits group nogroup: as primary and as supplementary group.
  if grep -q "group = nogroup" "$tmp/gamma.conf"; then
    g=$(stat -c '%a %G' "$tmp/gamma.ctl")
    run p3 "${nobody[@]}" "$altpath" --socket "$tmp/gamma.ctl" ping
    run p4 setpriv --reuid=65534 --regid=12345 --groups=65534 \
      "$altpath" --socket "$tmp/gamma.ctl" ping
    if [ "$g" = "660 nogroup" ] && [ $rc -eq 0 ] \
       && grep -q "answers" "$tmp/p3.out"; then
      pass "group = nogroup: socket 0660 root:nogroup, its members get in"
    else
      fail "group access: '$g', rc $rc: $(cat "$tmp/p3.err" "$tmp/p4.err")"
    fi
  fi
  chmod 700 "$tmp"
else
  echo "skip: permission checks (need root and setpriv)"
fi

# Garbage, an over-long line, a half line, and many clients at once: each
# gets its answer, and the daemon serves on.
if $PY - "$ctl_alpha" <<'EOF' >"$tmp/garbage.out" 2>&1; then
import json, socket, sys, threading, time
path = sys.argv[1]

def conn():
    # As altpath does: a full accept queue (EAGAIN) is retried.
    for _ in range(500):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            time.sleep(0.01)
    raise TimeoutError("the accept queue stayed full for 5 s")

pending = {}
def reply(s):
    """The next line from s, as JSON (replies may arrive together)."""
    buf = pending.pop(s, b"")
    while b"\n" not in buf:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    line, _, rest = buf.partition(b"\n")
    pending[s] = rest
    return json.loads(line)

def closed(s):
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True

s = conn()
s.sendall(b"\x00\xffgarbage\n")
r = reply(s)
assert r["ok"] is False and r["code"] == "EPROTO" and r["version"] == 1, r
assert closed(s)
print("garbage:", r["error"])

s = conn()
try:
    s.sendall(b"{" + b"x" * (100 * 1024))
except (BrokenPipeError, ConnectionResetError):
    pass
r = reply(s)
assert r["code"] == "EMSGSIZE", r
print("over-long line:", r["error"])

s = conn()
s.sendall(b'{"version":1,"cmd":"show","device":"$4$DKB100","path":"x"}\n')
r = reply(s)
assert r["code"] == "EINVAL" and "path" in r["error"], r
print("bad field:", r["error"])

# A client that sends half a line and waits: it holds only itself.
slow = conn()
slow.sendall(b'{"version":1,')

results = []
def client():
    c = conn()
    c.sendall(b'{"version":1,"cmd":"list"}\n{"version":1,"cmd":"ping"}\n')
    a, b = reply(c), reply(c)
    results.append(a["ok"] and len(a["devices"]) >= 2 and b["ok"]
                   and b["node"] == "ALPHA")
    c.close()
ts = [threading.Thread(target=client) for _ in range(40)]
for t in ts: t.start()
for t in ts: t.join()
assert len(results) == 40 and all(results), results
print("40 clients at once: all answered")
slow.close()
EOF
  pass "garbage, an over-long line, a bad field, 40 clients at once:"
  sed 's/^/    /' "$tmp/garbage.out"
else
  fail "the socket under abuse:"; cat "$tmp/garbage.out"
fi
run alive "${A[@]}" ping
[ $rc -eq 0 ] && pass "altpathd still answers" || fail "altpathd is gone: $(cat "$tmp/alive.err")"

# Timeout: a daemon stopped (SIGSTOP) makes altpath give up in time.
kill -STOP "${pid[alpha]}"
start_s=$(date +%s.%N)
run to "${A[@]}" --timeout 2 show devices
secs=$(awk -v a="$start_s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ $rc -eq 5 ] && one_line to && awk -v s="$secs" 'BEGIN { exit !(s < 4) }'; then
  pass "daemon stopped with SIGSTOP: exit 5 after ${secs}s: $(cat "$tmp/to.err")"
else
  fail "SIGSTOP: rc $rc after ${secs}s: $(cat "$tmp/to.out" "$tmp/to.err")"
fi
# Its accept queue full too (64): connecting is bounded as well.
for _ in $(seq 72); do
  "${A[@]}" --timeout 1 ping >/dev/null 2>&1 &
  bg+=("$!")
done
sleep 0.3
start_s=$(date +%s.%N)
run to2 "${A[@]}" --timeout 1.5 ping
secs=$(awk -v a="$start_s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ $rc -eq 5 ] && awk -v s="$secs" 'BEGIN { exit !(s < 3.5) }'; then
  pass "and with its accept queue full: exit 5 after ${secs}s"
else
  fail "full backlog: rc $rc after ${secs}s: $(cat "$tmp/to2.err")"
fi
kill -CONT "${pid[alpha]}"
ok=
for _ in $(seq 50); do
  "${A[@]}" --timeout 1 ping >/dev/null 2>&1 && { ok=1; break; }
  sleep 0.1
done
[ -n "$ok" ] && pass "after SIGCONT it answers again" || fail "no answer after SIGCONT"

# --------------------------------------------------------------- stopped
kill -TERM "${pid[alpha]}"
wait "${pid[alpha]}"; r=$?
[ $r -eq 0 ] || fail "alpha exited $r on SIGTERM"
run gone "${A[@]}" show devices
if [ $rc -eq 3 ] && one_line gone && grep -qF "$ctl_alpha" "$tmp/gone.err" \
   && [ ! -e "$ctl_alpha" ]; then
  pass "after altpathd stops: socket removed, exit 3: $(cat "$tmp/gone.err")"
else
  fail "after stop: rc $rc: $(cat "$tmp/gone.err")"
fi

# A state file that cannot be read stops the start, names the file and
# what is wrong, and is left as it was.
bad_state() {   # bad_state NAME FRAGMENT CONTENT
  printf '%s' "$3" >"$sf"
  cp "$sf" "$tmp/sf.before"
  out=$(timeout 20 "$altpathd" --config "$tmp/alpha.conf" 2>&1); r=$?
  if [ $r -eq 1 ] && grep -qF "altpathd: error: cannot join the cluster: state file $sf" <<<"$out" \
     && grep -qF -- "$2" <<<"$out" && cmp -s "$sf" "$tmp/sf.before"; then
    pass "state file $1: exit 1: $(grep -m1 'state file' <<<"$out" | cut -c1-150)..."
  else
    fail "state file $1: exit $r: $out"
  fi
}
bad_state empty "is empty" ""
bad_state not-json "not valid JSON" '{"version": 1, "node": "ALPHA", "units": {'
bad_state trailing "more after its JSON object" '{"version":1,"node":"ALPHA","units":{}} x'
bad_state other-node "belongs to node BETA, and this is node ALPHA" '{"version":1,"node":"BETA","units":{}}'
bad_state newer "is version 2" '{"version":2,"node":"ALPHA","units":{}}'
bad_state no-units "no 'units'" '{"version":1,"node":"ALPHA"}'
bad_state disabled-type "'disabled' is not a list" '{"version":1,"node":"ALPHA","units":{"$4$DKB100":{"disabled":"direct"}}}'
bad_state pinned-type "'pinned' is not a path name" '{"version":1,"node":"ALPHA","units":{"$4$DKB100":{"pinned":7}}}'
bad_state too-many "more than a unit keeps" "{\"version\":1,\"node\":\"ALPHA\",\"units\":{\"X\":{\"disabled\":[$(seq -s, -f '"p%g"' 17)]}}}"
rm -f "$sf"

# The others stop cleanly too (under ASan: without a leak report).
for n in beta gamma; do
  kill -TERM "${pid[$n]}"
  wait "${pid[$n]}"; r=$?
  [ $r -eq 0 ] || fail "$n exited $r on SIGTERM"
done

if [ $failures -gt 0 ]; then
  for n in alpha beta gamma; do
    echo "----- $n's log (last 30 lines) -----"
    tail -n 30 "$tmp/$n.log"
  done
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
