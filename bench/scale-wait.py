#!/usr/bin/env python3
"""scale-wait.py — wait until altpathd nodes have all their units, for
bench/scale.sh.

    scale-wait.py [--one] CLI DEVICES TIMEOUT_S NODE CTL PATHS ACTIVE [NODE ...]

For each node, polls `CLI --socket CTL --json show devices` (about every
100 ms, through the node's control socket) until the node lists exactly
the devices of the file DEVICES (one name a line), each one `online`, with
exactly the paths PATHS (comma-separated path names, e.g.
direct,served:B), each of them healthy (state active or standby), and its
active path matching ACTIVE (a path name, or `served:*` for any served
path).

With --one, DEVICES holds one device, polled with `show device NAME` (a
small reply however many devices the node has), and the node's other
devices do not matter: for the time until a hot-added disk is in use.

Python takes seconds to start on a loaded machine, so the clock is not
started here: once ready, it prints `ready` and reads one line from stdin,
T0, when the clock started (seconds since the epoch, `date +%s.%N`: when
the caller started the nodes).  Then it polls, and prints one line per
node: `NODE SECONDS` (seconds from T0 until that node first satisfied
everything), or, at the timeout, `NODE timeout` followed by how far it got
(devices listed, devices good, and the first few problems).  Also prints
`NODE reply_bytes N` (the size of the last reply, to see the control
socket's reply size) and `NODE cli_ms N` (the slowest CLI call).

Exit status: 0 every node converged; 1 a node did not within TIMEOUT_S;
2 bad arguments.
"""
import fnmatch
import json
import subprocess
import sys
import time


def check(reply, want_devs, paths, active):
    """Return (n_listed, n_good, problems) for one `show devices` reply."""
    try:
        r = json.loads(reply)
    except ValueError as e:
        return 0, 0, ["reply is not JSON: %s" % e]
    if not r.get("ok"):
        return 0, 0, ["error: %s" % r.get("error", reply[:200])]
    if "device" in r:                   # show device NAME (--one)
        devs = {r["device"].get("name"): r["device"]}
    else:
        devs = {d.get("name"): d for d in r.get("devices", [])}
    problems = []
    good = 0
    for name in want_devs:
        d = devs.get(name)
        if d is None:
            if len(problems) < 3:
                problems.append("%s missing" % name)
            continue
        have = {p["name"]: p for p in d.get("paths", [])}
        why = None
        if d.get("state") != "online":
            why = "state %s" % d.get("state")
        elif set(have) != paths:
            why = "paths %s" % ",".join(sorted(have))
        else:
            bad = [n for n, p in have.items()
                   if p.get("state") not in ("active", "standby")]
            act = [n for n, p in have.items() if p.get("active")]
            if bad:
                why = "path %s %s" % (bad[0], have[bad[0]].get("state"))
            elif len(act) != 1 or not fnmatch.fnmatchcase(act[0], active):
                why = "active %s" % (act or "none")
        if why:
            if len(problems) < 3:
                problems.append("%s: %s" % (name, why))
        else:
            good += 1
    extra = set(devs) - set(want_devs)
    if extra:
        problems.append("unexpected devices: %s" % " ".join(sorted(extra)[:3]))
        good = min(good, len(want_devs) - 1)
    return len(devs), good, problems


def main():
    argv = sys.argv[1:]
    one = argv[:1] == ["--one"]
    if one:
        argv = argv[1:]
    args = argv[3:]
    if len(argv) < 7 or len(args) % 4:
        print(__doc__, file=sys.stderr)
        return 2
    cli, devfile, timeout = argv[0], argv[1], float(argv[2])
    nodes = []
    for i in range(0, len(args), 4):
        name, ctl, paths, active = args[i:i + 4]
        nodes.append({"name": name, "ctl": ctl, "paths": set(paths.split(",")),
                      "active": active, "done": None, "last": (0, 0, []),
                      "bytes": 0, "cli_ms": 0.0})
    want = [l.strip() for l in open(devfile) if l.strip()]
    if one and len(want) != 1:
        print("--one: %s must hold one device" % devfile, file=sys.stderr)
        return 2
    cmd = ["show", "device", want[0]] if one else ["show", "devices"]
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    # Wall clock, the only one shared with the shell that started the nodes.
    start = t0
    while True:
        pending = [n for n in nodes if n["done"] is None]
        if not pending:
            break
        t_round = time.monotonic()
        for n in pending:
            tc = time.monotonic()
            try:
                out = subprocess.run(
                    [cli, "--socket", n["ctl"], "--json", "--timeout", "20"]
                    + cmd, capture_output=True, text=True,
                    timeout=30).stdout
            except subprocess.TimeoutExpired:
                out = '{"ok":false,"error":"altpath show devices hung 30 s"}'
            n["cli_ms"] = max(n["cli_ms"], (time.monotonic() - tc) * 1000)
            n["bytes"] = len(out)
            n["last"] = check(out, want, n["paths"], n["active"])
            if n["last"][1] == len(want) and not n["last"][2]:
                n["done"] = time.time() - start
        if time.time() - start > timeout:
            break
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t_round)))
    rc = 0
    for n in nodes:
        if n["done"] is not None:
            print("%s %.2f" % (n["name"], n["done"]))
        else:
            listed, good, problems = n["last"]
            print("%s timeout: lists %d of %d devices, %d as expected; %s"
                  % (n["name"], listed, len(want), good,
                     "; ".join(problems) or "-"))
            rc = 1
        print("%s reply_bytes %d" % (n["name"], n["bytes"]))
        print("%s cli_ms %.0f" % (n["name"], n["cli_ms"]))
    return rc


if __name__ == "__main__":
    sys.exit(main())
