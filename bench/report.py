#!/usr/bin/python3
"""bench/report.py REPORT_DIR — assemble REPORT_DIR/REPORT.md and its plots.

bench/run.sh calls it last.  It reads, from REPORT_DIR:

  results.tsv        every data-path measurement, one line each (format in
                     bench/lib.sh): section, row, tool, role (ours|peer),
                     run, value, unit (IOPS|MB/s), p50_us, p99_us
  parts.tsv          what ran: part, status (ok|failed|skipped|missing),
                     seconds, note
  problems.txt       every tool failure, one line each
  failover-pause.md  failover-pause's tables (run.sh)
  nbd-server.md      nbd-server.sh's detailed report (its memory table is
                     copied in; the rest is linked)
  timeline.md, scale.md   the other agents' fragments, with their PNGs

and writes REPORT.md plus, with gnuplot (pngcairo, no X needed):

  ratios.png             one bar per row: ours / the best peer of each run
                         (median, with the min-max of the runs), with each
                         comparison's goal line
  throughput-<sec>.png   each comparison's absolute figures (median with
                         min-max), MB/s rows and IOPS rows side by side

The environment gives what only run.sh knows: QUICK, LOAD_START, LOAD_END,
DATE_START, TOTAL_SECONDS, IMAGE_DIR, SIZE, RUNS, BENCH_SECONDS, RAMP.

Exit status: 0 the report was written; 1 it could not be (gnuplot failed,
a file could not be written: the reason on stderr).
"""

import collections
import os
import re
import shutil
import statistics
import subprocess
import sys

if len(sys.argv) != 2:
    sys.exit("usage: bench/report.py REPORT_DIR")
D = os.path.abspath(sys.argv[1])
env = os.environ.get
QUICK = env("QUICK", "0") == "1"

# The comparisons, in the report's order: title, what it means, the goal
# (None: the issues set none; 1.0 is drawn as the reference).
SECTIONS = collections.OrderedDict([
    ("unit", dict(
        title="Unit over one direct path against fio (io_uring)",
        goal=0.95, goal_src="issue 2",
        desc="ap-bench (one altpath unit over one direct path: O_DIRECT, "
             "io_uring, the unit's asynchronous API) and fio "
             "(`--ioengine=io_uring --direct=1`, one job) on the same file "
             "in {IMAGE_DIR}, with the same block size and queue depth, "
             "alternating which goes first.  The ratio says what the unit's "
             "layer (state machine, accounting, callbacks) costs on top of "
             "the raw io_uring path.")),
    ("nbd", dict(
        title="altpathd's NBD server against nbdkit and qemu-nbd",
        goal=1.2, goal_src="issue 3",
        # Issue 3 sets its goal for these rows; the others are for reference.
        goal_rows=r"^(seqread|seqwrite) |^randread 4k QD32 ",
        desc="Each server in turn serves the same file in /dev/shm; the same "
             "clients against each: nbdcopy for the 1 MiB rows (to `null:` "
             "and from a file; MB/s over nbdcopy's wall time, connecting "
             "included; nbdcopy uses multi-conn where offered), fio's `nbd` "
             "engine for the 4 KiB rows (one connection; plaintext only: "
             "it cannot load a PSK file).  Peers: nbdkit's file plugin, "
             "qemu-nbd by default and with `--cache=none --aio=io_uring`.  "
             "The ratio is altpathd / the best peer of each run.  The "
             "goal is issue 3's: sequential rows and 4 KiB random reads at "
             "QD 32; the other rows are for reference.  *nbdkit null "
             "(ceiling)*, on the plaintext nbdcopy rows, stores nothing and "
             "reads zeroes: it is not a peer, but shows how far nbdcopy "
             "goes against a server that costs next to nothing; where even "
             "its ratio is below the goal, no server can meet it on this "
             "machine.  Details, "
             "nbdcopy's connection counts and every run: "
             "[nbd-server.md](nbd-server.md).")),
    ("served", dict(
        title="A unit over a served path against fio's nbd engine, on the same altpathd",
        goal=None, goal_src="",
        desc="One altpathd serves the file (/dev/shm, 127.0.0.1 TCP, "
             "plaintext).  ap-bench `--uri` drives a unit whose one path "
             "is a served path (lib/path-served.c, libnbd) with one "
             "connection; fio's `nbd` engine (libnbd too, one connection) "
             "drives the same server with the same block size and queue "
             "depth.  The ratio says what the unit and the served path "
             "cost (or gain: the served path is asynchronous) against a "
             "plain NBD client.  The issues set no goal: 1.0 is the "
             "reference.")),
    ("fuse", dict(
        title="altpathd's FUSE device file against nbdfuse over nbdkit",
        goal=None, goal_src="",
        desc="The same file (/dev/shm) as altpathd's device file (a unit "
             "over one direct path, docs/devices.md) and as nbdfuse's file "
             "(`nbdfuse DIR/disk --command nbdkit -s file IMG`); the same "
             "fio on both (`--ioengine=libaio --direct=1`, one job).  The "
             "issues set no goal: 1.0 is the reference.")),
])
COLORS = {"unit": "#1f77b4", "nbd": "#ff7f0e", "served": "#2ca02c", "fuse": "#9467bd"}


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return "%.0f" % v
    return "%.1f" % v


def spread(vals):
    """'median (min–max)' of a list, or the value alone for one run."""
    if not vals:
        return "failed"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m)
    return "%s (%s–%s)" % (fmt(m), fmt(min(vals)), fmt(max(vals)))


def read_tsv(name, ncols):
    out = []
    try:
        with open(os.path.join(D, name)) as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if len(cols) >= ncols:
                    out.append(cols)
    except FileNotFoundError:
        pass
    return out


def read_text(name):
    try:
        with open(os.path.join(D, name)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


# ------------------------------------------------------------- the data
# data[sec][row][tool][run] = (value, p50, p99); order kept as first seen.
data = collections.OrderedDict((s, collections.OrderedDict()) for s in SECTIONS)
tools = {s: [] for s in SECTIONS}
roles = {}
units = {}
for sec, row, tool, role, run, value, unit, p50, p99 in read_tsv("results.tsv", 9):
    if sec not in data or num(value) is None:
        continue
    data[sec].setdefault(row, {}).setdefault(tool, {})[run] = (num(value), num(p50), num(p99))
    if tool not in tools[sec]:
        tools[sec].append(tool)
    roles[sec, tool] = role
    units[sec, row] = unit
for sec in SECTIONS:                    # ours first, then the peers
    tools[sec].sort(key=lambda t: roles[sec, t] != "ours")


def ratios(sec, row):
    """Per-run ratios ours / best peer, and the best peer's name per run."""
    r, best_names = [], []
    cells = data[sec][row]
    ours = [t for t in tools[sec] if roles[sec, t] == "ours"]
    runs = sorted({run for t in cells for run in cells[t]}, key=int)
    for run in runs:
        o = [cells[t][run][0] for t in ours if t in cells and run in cells[t]]
        peers = [(cells[t][run][0], t) for t in tools[sec]
                 if roles[sec, t] == "peer" and t in cells and run in cells[t]]
        if not o or not peers:
            continue
        best = max(peers)
        if best[0] > 0:
            r.append(o[0] / best[0])
            best_names.append(best[1])
    return r, best_names


summary = []          # (sec, row, unit, ours_med, best_name, best_med, r_med, r_min, r_max)
for sec in SECTIONS:
    for row in data[sec]:
        r, names = ratios(sec, row)
        cells = data[sec][row]
        ours = [t for t in tools[sec] if roles[sec, t] == "ours"]
        om = [v[0] for t in ours if t in cells for v in cells[t].values()]
        bn = collections.Counter(names).most_common(1)[0][0] if names else None
        bm = [v[0] for v in cells[bn].values()] if bn else []
        summary.append((sec, row, units[sec, row],
                        statistics.median(om) if om else None, bn,
                        statistics.median(bm) if bm else None,
                        statistics.median(r) if r else None,
                        min(r) if r else None, max(r) if r else None))


def row_goal(sec, row):
    """The goal of one row: the section's, unless the row is not one the
    goal was set for."""
    g = SECTIONS[sec]["goal"]
    pat = SECTIONS[sec].get("goal_rows")
    if g is not None and pat and not re.search(pat, row):
        return None
    return g


def ceiling_ratio(sec, row):
    """Median over the runs of the ceiling tool / best peer, or None."""
    cells = data[sec][row]
    r = []
    for t in tools[sec]:
        if roles[sec, t] != "ceiling" or t not in cells:
            continue
        for run, v in cells[t].items():
            peers = [cells[p][run][0] for p in tools[sec]
                     if roles[sec, p] == "peer" and p in cells and run in cells[p]]
            if peers and max(peers) > 0:
                r.append(v[0] / max(peers))
    return statistics.median(r) if r else None


def verdict(sec, row, r):
    g = row_goal(sec, row)
    if r is None:
        return "no figure"
    if g is None:
        return "(reference)" if SECTIONS[sec]["goal"] else "(no goal)"
    if r >= g:
        return "met"
    c = ceiling_ratio(sec, row)
    if c is not None and c < g:
        return "**missed**: out of reach here, the ceiling is %.2f" % c
    return "**missed**"


# ----------------------------------------------------------------- plots
gp_errors = []
DATS = []             # the data files of the plot being drawn


def gnuplot(script, name):
    path = os.path.join(D, name + ".gp")
    with open(path, "w") as f:
        f.write(script)
    p = subprocess.run(["gnuplot", path], cwd=D, capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or not os.path.exists(os.path.join(D, name + ".png")):
        gp_errors.append("gnuplot %s.gp failed: %s" % (name, p.stderr.strip()[-500:]))
        return False
    os.unlink(path)
    for dat in DATS:
        try:
            os.unlink(os.path.join(D, dat))
        except FileNotFoundError:
            pass
    DATS.clear()
    return True


def q(s):
    """A gnuplot string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


plots = {}
rated = [s for s in summary if s[6] is not None]
if rated:
    n = len(rated)
    lines = []
    for i, (sec, row, *_rest) in enumerate(rated):
        r, lo, hi = _rest[4], _rest[5], _rest[6]
        lines.append("%d\t%.4f\t%.4f\t%.4f\t%s\n" % (n - 1 - i, r, lo, hi, sec))
    DATS.append("ratios.dat")
    with open(os.path.join(D, "ratios.dat"), "w") as f:
        f.writelines(lines)
    # A log scale: ratios run from far below 1 to far above it, and 0.5
    # and 2 are the same distance from 1.
    xmax = max(2.0, max(s[8] for s in rated) * 1.3)
    xmin = min(0.5, min(s[7] for s in rated) / 1.3)
    ytics = ", ".join("%s %d" % (q("%s: %s" % (sec, row)), n - 1 - i)
                      for i, (sec, row, *_r) in enumerate(rated))
    arrows = []
    for sec, meta in SECTIONS.items():
        idx = [n - 1 - i for i, s in enumerate(rated) if s[0] == sec]
        if not idx:
            continue
        g = meta["goal"] or 1.0
        dt = "1" if meta["goal"] else "2"
        arrows.append("set arrow from %g,%g to %g,%g nohead lw 2 dt %s lc rgb %s front"
                      % (g, min(idx) - 0.5, g, max(idx) + 0.5, dt, q("#d62728")))
    plot_parts = []
    for sec in SECTIONS:
        if any(s[0] == sec for s in rated):
            plot_parts.append(
                "'ratios.dat' using (strcol(5) eq %s ? $2 : 1/0):1:(%g):2:($1 - 0.35):($1 + 0.35) "
                "with boxxyerror fs solid 0.7 lc rgb %s title %s"
                % (q(sec), xmin, q(COLORS[sec]), q(SECTIONS[sec]["title"])))
    plot_parts.append("'ratios.dat' using 2:1:3:4 with xerrorbars pt 7 ps 0.5 lc rgb 'black' "
                      "title 'median, min–max of the runs'")
    script = "\n".join([
        "set terminal pngcairo noenhanced size 1100,%d font 'DejaVu Sans,9'" % (170 + 22 * n),
        "set output 'ratios.png'",
        "set datafile separator '\\t'",
        "set title 'Ours / best peer, per row (red line: the goal; dashed: 1.0, no goal set)'",
        "set xlabel 'ratio (log scale)'",
        "set logscale x 2",
        "set xtics (0.03125, 0.0625, 0.125, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 8, 16, 32, 64)",
        "set xrange [%g:%g]" % (xmin, xmax),
        "set yrange [-0.7:%g]" % (n - 0.3),
        "set ytics (%s)" % ytics,
        "set grid xtics",
        "set key outside bottom center horizontal",
    ] + arrows + ["plot " + ", \\\n     ".join(plot_parts), ""])
    if gnuplot(script, "ratios"):
        plots["ratios"] = "ratios.png"

for sec in SECTIONS:
    rows = list(data[sec])
    if not rows:
        continue
    panels = []
    for unit in ("MB/s", "IOPS"):
        urows = [r for r in rows if units[sec, r] == unit]
        if not urows:
            continue
        fname = "throughput-%s-%s.dat" % (sec, "mbs" if unit == "MB/s" else "iops")
        DATS.append(fname)
        with open(os.path.join(D, fname), "w") as f:
            for r in urows:
                cols = [r]
                for t in tools[sec]:
                    v = [x[0] for x in data[sec][r].get(t, {}).values()]
                    if v:
                        cols += ["%g" % statistics.median(v), "%g" % min(v), "%g" % max(v)]
                    else:
                        cols += ["-", "-", "-"]
                f.write("\t".join(cols) + "\n")
        panels.append((unit, fname, len(urows)))
    width = max(900, sum(200 + 110 * p[2] for p in panels))
    script = [
        "set terminal pngcairo noenhanced size %d,560 font 'DejaVu Sans,9'" % width,
        "set output 'throughput-%s.png'" % sec,
        "set datafile separator '\\t'",
        "set datafile missing '-'",
        "set style data histogram",
        "set style histogram errorbars gap 1 lw 1",
        "set style fill solid 0.8 border -1",
        "set xtics rotate by -25 noenhanced",
        "set key below",
        "set bmargin 9",
        "set rmargin 6",
        "set grid ytics",
        "set yrange [0:*]",
        "set multiplot layout 1,%d title %s" % (len(panels), q(SECTIONS[sec]["title"] + " (median, min–max)")),
    ]
    for unit, fname, _n in panels:
        parts = []
        for i, t in enumerate(tools[sec]):
            c = 2 + 3 * i
            parts.append("'%s' using %d:%d:%d%s title %s" % (
                fname, c, c + 1, c + 2, ":xtic(1)" if i == 0 else "", q(t)))
        script += ["set ylabel %s" % q(unit), "plot " + ", ".join(parts)]
    script += ["unset multiplot", ""]
    if gnuplot("\n".join(script), "throughput-%s" % sec):
        plots["throughput-" + sec] = "throughput-%s.png" % sec


# ---------------------------------------------------------------- report
def sh(*cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not installed"


def meminfo():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return "%.1f GiB" % (int(line.split()[1]) / 1048576)
    return "?"


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def fs_of(path):
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True).stdout.splitlines()
        f = out[1].split()
        return "%s (%s)" % (f[1], f[0])
    except (OSError, IndexError):
        return "?"


def git(*args):
    try:
        return subprocess.run(["git"] + list(args), capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return ""


parts = read_tsv("parts.tsv", 4)
problems = [line for line in (read_text("problems.txt") or "").splitlines() if line.strip()]
out = []
w = out.append
rev = git("rev-parse", "--short", "HEAD") or "no commit"
dirty = " (with uncommitted changes)" if git("status", "--porcelain") else ""
load_start, load_end = env("LOAD_START", "?"), env("LOAD_END", "?")
nproc = os.cpu_count() or 1

w("# altpath benchmarks%s" % (" (QUICK=1: a smoke test, not figures to quote)" if QUICK else ""))
w("")
w("Written by `bench/run.sh` (`%smake bench`), started %s, source %s%s; %s s in all."
  % ("QUICK=1 " if QUICK else "", env("DATE_START", "?"), rev, dirty, env("TOTAL_SECONDS", "?")))
w("Every comparison was measured side by side in this run, on this machine: "
  "compare the ratios, not the absolute figures, across machines.")
w("")
w("## Machine")
w("")
w("| | |")
w("|---|---|")
w("| CPUs (nproc) | %d × %s |" % (nproc, cpu_model()))
w("| memory | %s |" % meminfo())
w("| kernel | %s |" % os.uname().release)
w("| load average (1, 5, 15 min) | %s at the start, %s at the end |" % (load_start, load_end))
w("| images | unit: %s in %s, %s; NBD, served path, device file: /dev/shm, %s |"
  % (env("SIZE", "?"), env("IMAGE_DIR", "/tmp"), fs_of(env("IMAGE_DIR", "/tmp")), fs_of("/dev/shm")))
w("| fio | %s |" % sh("fio", "--version"))
w("| nbdkit, qemu-nbd, nbdcopy, nbdfuse | %s; %s; %s; %s |"
  % (sh("nbdkit", "--version"), sh("qemu-nbd", "--version"), sh("nbdcopy", "--version"), sh("nbdfuse", "--version")))
w("| QUICK | %s |" % ("1" if QUICK else "0"))
w("")
try:
    loaded = max(float(load_start.split()[0]), float(load_end.split()[0])) > nproc
except (ValueError, IndexError):
    loaded = False
if loaded:
    w("**The load average was above the number of CPUs**: other work competed "
      "with the tools for the CPUs, so single runs can be far off.  Trust a "
      "median only where its min–max range is narrow, and rerun on a quiet "
      "machine (or with more `RUNS`) before concluding from a ratio.")
    w("")

w("## What ran")
w("")
w("| part | status | seconds | |")
w("|---|---|---|---|")
for name, status, secs, note in parts:
    w("| %s | %s | %s | %s |" % (name, status if status == "ok" else "**%s**" % status, secs, note))
w("")
if QUICK:
    w("QUICK=1 runs each comparison once, with measurements under a second, "
      "on a subset: the unit and the served path on 4 KiB random reads at QD 32 "
      "and 1 MiB sequential writes, the device file on 4 KiB random reads at "
      "QD 32 and 1 MiB sequential reads, the NBD servers on TCP plaintext and "
      "Unix + TLS-PSK (sequential rows, and 4 KiB random reads at QD 32 on "
      "TCP), the memory test at 256 KiB for altpathd only (4 clients), failover-pause with "
      "1 repetition, and timeline.sh / scale.sh in their own QUICK modes.  "
      "It checks that every benchmark still runs; its figures are not to be quoted.")
    w("")
if problems:
    w("**Problems** (a tool failed, crashed or hung; its figures are missing):")
    w("")
    for p in problems:
        w("- %s" % p)
    w("")

w("## Summary: ours against the best peer")
w("")
w("Each ratio is the median over the runs of ours / the best peer of the same "
  "run (in IOPS for 4 KiB rows, MB/s for 1 MiB rows), with the smallest and "
  "largest per-run ratio.  Absolute figures are medians over the runs.  "
  "Sequential rows run at queue depth 8 (fio, ap-bench; nbdcopy its own), "
  "random rows at the queue depth named.")
w("")
w("| comparison | row | ours | best peer | ratio | per-run range | goal | |")
w("|---|---|---|---|---|---|---|---|")
for sec, row, unit, om, bn, bm, r, lo, hi in summary:
    g = row_goal(sec, row)
    w("| %s | %s | %s %s | %s %s (%s) | %s | %s | %s | %s |" % (
        sec, row, fmt(om), unit, fmt(bm), unit, bn or "-",
        "%.2f" % r if r is not None else "n/a",
        "%.2f–%.2f" % (lo, hi) if r is not None else "n/a",
        "≥ %g (%s)" % (g, SECTIONS[sec]["goal_src"]) if g
        else "none (1.0 for reference)",
        verdict(sec, row, r)))
if not summary:
    w("| | no figures | | | | | | |")
w("")
if "ratios" in plots:
    w("![ours / best peer per row](ratios.png)")
    w("")

# The goals that are not ratios, from the detailed sections below: the
# failover pause (failover-pause's machine-readable comment lines) and
# altpathd's memory (nbd-server.md's table).
other = []
for line in (read_text("failover-pause.md") or "").splitlines():
    if line.startswith("<!-- scenario="):
        kv = dict(x.split("=", 1) for x in line[5:-4].split() if "=" in x)
        other.append(("failover-pause: %s, random %ss" % (kv.get("scenario"), kv.get("rw")),
                      "pause %s ms (median; %s–%s)" % (kv.get("pause_ms_median"), kv.get("pause_ms_min"),
                                                      kv.get("pause_ms_max")),
                      "< %s ms" % kv.get("goal_ms"),
                      "met" if kv.get("met") == "yes" else "**missed**"))
for line in (read_text("nbd-server.md") or "").splitlines():
    c = [x.strip() for x in line.strip().strip("|").split("|")]
    if len(c) >= 9 and c[0] == "altpathd" and c[7].startswith("<"):
        other.append(("altpathd memory, %s requests, %s" % (c[1], c[2]), "VmHWM %s MiB" % c[6],
                      "%s MiB" % c[7], c[8]))
if other:
    w("Goals that are not ratios:")
    w("")
    w("| what | figure | goal | |")
    w("|---|---|---|---|")
    for o in other:
        w("| %s | %s | %s | %s |" % o)
    w("")

w("## Data path")
w("")
for sec, meta in SECTIONS.items():
    w("### %s" % meta["title"])
    w("")
    w(meta["desc"].format(IMAGE_DIR=env("IMAGE_DIR", "/tmp")))
    w("")
    if not data[sec]:
        st = [p for p in parts if p[0] in ({"unit": "unit", "nbd": "nbd-server",
                                             "served": "served", "fuse": "fuse"}[sec],)]
        w("No figures%s." % (": %s %s" % (st[0][1], st[0][3]) if st else ""))
        w("")
        continue
    ts = tools[sec]
    w("| row | %s | ours / best peer | range | goal | |" % " | ".join(
        "%s%s" % (t, " (ours)" if roles[sec, t] == "ours" else "") for t in ts))
    w("|---|%s---|---|---|---|" % ("---|" * len(ts)))
    for s in summary:
        if s[0] != sec:
            continue
        row = s[1]
        cells = [spread([v[0] for v in data[sec][row].get(t, {}).values()]) for t in ts]
        g = row_goal(sec, row)
        w("| %s, %s | %s | %s | %s | %s | %s |" % (
            row, s[2], " | ".join(cells),
            "%.2f" % s[6] if s[6] is not None else "n/a",
            "%.2f–%.2f" % (s[7], s[8]) if s[6] is not None else "n/a",
            "≥ %g" % g if g else "–", verdict(sec, row, s[6])))
    w("")
    lat_rows = [r for r in data[sec] if any(v[1] is not None for t in data[sec][r]
                                             for v in data[sec][r][t].values())]
    if lat_rows:
        w("Latency, submit to completion, p50 / p99 in µs (medians over the runs):")
        w("")
        w("| row | %s |" % " | ".join(ts))
        w("|---|%s" % ("---|" * len(ts)))
        for r in lat_rows:
            c = []
            for t in ts:
                v = list(data[sec][r].get(t, {}).values())
                p50 = [x[1] for x in v if x[1] is not None]
                p99 = [x[2] for x in v if x[2] is not None]
                c.append("%s / %s" % (fmt(statistics.median(p50)) if p50 else "-",
                                      fmt(statistics.median(p99)) if p99 else "-"))
            w("| %s | %s |" % (r, " | ".join(c)))
        w("")
    if "throughput-" + sec in plots:
        w("![%s](%s)" % (meta["title"], plots["throughput-" + sec]))
        w("")
    if sec == "nbd":
        nbd_md = read_text("nbd-server.md")
        if nbd_md and "## Memory" in nbd_md:
            mem = nbd_md.split("## Memory", 1)[1].split("<details>", 1)[0].strip()
            w("#### altpathd's memory under load (issue 3: VmHWM < 64 MiB)")
            w("")
            w(mem)
            w("")

w("## Failover")
w("")
fo = read_text("failover-pause.md")
if fo:
    w("failover-pause: a unit over two direct paths to the image, each behind "
      "the fault-injecting wrapper; the active one fails (EIO, or hangs with a "
      "200 ms request timeout) after a warm-up.  The pause is the longest time "
      "the caller saw no completion (bench/README.md).  Goals (issue 2): "
      "< 50 ms on EIO, < 250 ms on a hang.")
    w("")
    w(fo.strip())
    w("")
else:
    w("failover-pause did not run (FAILOVER=0).")
    w("")


def fragment(name, heading):
    text = read_text(name + ".md")
    st = [p for p in parts if p[0] == name]
    if text and text.strip():
        w(text.strip())
        w("")
    else:
        w(heading)
        w("")
        if st:
            w("Not run: %s." % (st[0][3] or st[0][1]))
        else:
            w("Not run.")
        w("")


fragment("timeline", "## Failover timeline")
fragment("scale", "## Scale")

w("## Raw figures and how to rerun")
w("")
w("- Every measurement: [results.tsv](results.tsv) (section, row, tool, role, "
  "run, value, unit, p50 µs, p99 µs; format in `bench/lib.sh`).")
if read_text("nbd-server.md"):
    w("- The NBD server comparison in full, with nbdcopy's connections and every "
      "run: [nbd-server.md](nbd-server.md).")
w("- Rerun everything: `make bench` (about 15 minutes; `QUICK=1 make bench` "
  "in under 3, written to bench/report/quick/).  One part: `bench/nbd-server.sh`, "
  "`bench/datapath-served.sh`, `bench/datapath-fuse.sh`, `bench/timeline.sh`, "
  "`bench/scale.sh`; skip one in run.sh with `NBD=0`, `SERVED=0`, `FUSE=0`, "
  "`FAILOVER=0`, `TIMELINE=0`, `SCALE=0`.  More runs: `RUNS=5`; longer "
  "measurements: `BENCH_SECONDS`, `DP_SECONDS`, `NBD_SECONDS` (bench/README.md).")
w("")
if gp_errors:
    w("Plots that could not be drawn:")
    w("")
    for e in gp_errors:
        w("- %s" % e)
    w("")

tmp = os.path.join(D, "REPORT.md.tmp")
with open(tmp, "w") as f:
    f.write("\n".join(out))
os.replace(tmp, os.path.join(D, "REPORT.md"))
for e in gp_errors:
    print("report.py: " + e, file=sys.stderr)
sys.exit(1 if gp_errors else 0)
