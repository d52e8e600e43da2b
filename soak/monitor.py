#!/usr/bin/python3
"""monitor.py — the soak's outside observer of the three altpathd nodes.

Every INTERVAL seconds it asks each node's control socket for `list`
(every device with its paths) and `cluster` (registry health), and:

  * counts "two paths in flight": a device of which two or more paths
    have user requests in flight at the same moment (the per-path
    `inflight` of the device status: the unit's requests on that path,
    probes not included).  Invariant 1 forbids it; a sampled witness, so
    it can miss a short overlap but never invents one;
  * sums the switches (automatic + manual) of every device of every
    node, across daemon restarts: a restart starts the counters again
    from 0, so when a device's count goes down the last value seen is
    banked (switches in the last INTERVAL before a SIGKILL are missed);
  * decides whether the cluster has settled, as run.sh expects it after
    a fault is restored: every node answers, its registry is healthy,
    it has the units listed in expect.units (one name a line, re-read
    every round) and no other but those in expect.extra, A and B run each of them on `direct`, C on a served
    path with both served:A and served:B healthy (active or standby),
    every device online.  It writes "ok" or "waiting: why" to STATE.

At the end (SIGTERM) it writes a JSON summary to SUMMARY.

usage: monitor.py DIR INTERVAL
  DIR holds A.ctl B.ctl C.ctl, expect.units; the monitor writes
  mon.state, mon.summary.json and mon.log there.
"""
import json
import os
import signal
import socket
import sys
import time

NODES = ("A", "B", "C")
d = sys.argv[1]
interval = float(sys.argv[2])
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)

last = {}      # (node, device) -> last switches seen
banked = {}    # node -> switches banked from earlier incarnations
overlaps = 0   # samples with two paths in flight
overlap_ex = []
rounds = 0
unanswered = {n: 0 for n in NODES}
logf = open(os.path.join(d, "mon.log"), "a", buffering=1)


def log(msg):
    logf.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))


def ask(node, reqs):
    """Send each request on one connection; return the replies or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(os.path.join(d, node + ".ctl"))
        s.sendall("".join(json.dumps(r) + "\n" for r in reqs).encode())
        buf = b""
        out = []
        while len(out) < len(reqs):
            chunk = s.recv(1 << 20)
            if not chunk:
                return None
            buf += chunk
            while b"\n" in buf and len(out) < len(reqs):
                line, buf = buf.split(b"\n", 1)
                out.append(json.loads(line))
        return out
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def write_state(text):
    tmp = os.path.join(d, "mon.state.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, os.path.join(d, "mon.state"))


def expected(name):
    try:
        with open(os.path.join(d, name)) as f:
            return sorted(l.strip() for l in f if l.strip())
    except OSError:
        return []


while not stop:
    t0 = time.monotonic()
    rounds += 1
    want = expected("expect.units")
    extra = set(expected("expect.extra"))
    why = []
    for n in NODES:
        r = ask(n, [{"version": 1, "cmd": "list"},
                    {"version": 1, "cmd": "cluster"}])
        if not r or not r[0].get("ok"):
            unanswered[n] += 1
            why.append("%s does not answer" % n)
            continue
        devs = r[0].get("devices", [])
        cl = r[1].get("cluster", {}) if r[1].get("ok") else {}
        if not cl.get("registry_healthy", False):
            why.append("%s: registry not healthy" % n)
        names = sorted(x["name"] for x in devs)
        if not set(want) <= set(names) or not set(names) - set(want) <= extra:
            why.append("%s has units %s, want %s" % (n, names, want))
        for dev in devs:
            name = dev["name"]
            sw = dev.get("switches_auto", 0) + dev.get("switches_manual", 0)
            prev = last.get((n, name), 0)
            if sw < prev:
                banked[n] = banked.get(n, 0) + prev
            last[(n, name)] = sw
            busy = [p["name"] for p in dev.get("paths", [])
                    if p.get("inflight", 0) > 0]
            if len(busy) > 1:
                overlaps += 1
                ex = "%s %s: paths %s in flight at once" % (n, name, busy)
                log("OVERLAP " + ex)
                if len(overlap_ex) < 5:
                    overlap_ex.append(ex)
            if name not in want:
                continue
            if dev.get("state") != "online":
                why.append("%s %s is %s" % (n, name, dev.get("state")))
            paths = {p["name"]: p for p in dev.get("paths", [])}
            act = next((p["name"] for p in dev.get("paths", [])
                        if p.get("active")), "none")
            if n in ("A", "B"):
                if act != "direct":
                    why.append("%s %s on %s" % (n, name, act))
            else:
                if not act.startswith("served:"):
                    why.append("%s %s on %s" % (n, name, act))
                for s in ("served:A", "served:B"):
                    st = paths.get(s, {}).get("state", "missing")
                    if st not in ("active", "standby"):
                        why.append("%s %s: %s %s" % (n, name, s, st))
    write_state("ok" if not why else "waiting: " + "; ".join(why[:4]))
    dt = time.monotonic() - t0
    if dt < interval:
        time.sleep(interval - dt)

per_node = {}
for n in NODES:
    cur = sum(v for (node, _), v in last.items() if node == n)
    per_node[n] = banked.get(n, 0) + cur
with open(os.path.join(d, "mon.summary.json"), "w") as f:
    json.dump({"rounds": rounds, "overlaps": overlaps,
               "overlap_examples": overlap_ex, "switches": per_node,
               "unanswered_rounds": unanswered}, f)
