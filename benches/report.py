#!/usr/bin/env python3
"""Turns the console log of scripts/bench into results.json, results.md and plots.

Usage: report.py GUEST_LOG OUT_DIR MODE DEVICE
       report.py --results RESULTS_JSON OUT_DIR

The first form reads the log of a run; the second the results.json of an earlier one (it holds every
row, the run's mode and device), which gives the same report. MODE is the run of scripts/bench: full,
smoke or callgrind (--callgrind-only: results.md holds only the callgrind section). Plots
(benches/plots.py, matplotlib) go to OUT_DIR/plots and are linked from results.md above the tables.
Only a full run rewrites the results section of BENCHMARKS.md (two levels above OUT_DIR), with the
plots copied next to it into bench-plots/; without matplotlib it leaves BENCHMARKS.md alone and fails.
"""
import json
import os
import re
import shutil
import sys
from collections import defaultdict

if len(sys.argv) == 4 and sys.argv[1] == "--results":
    results_path, out_dir = sys.argv[2:4]
    log_path = None
elif len(sys.argv) == 5:
    log_path, out_dir, run_mode, device = sys.argv[1:5]
else:
    sys.exit(__doc__.strip())
RUNTIMES = ["tokio-ct", "tokio-mt", "async-std", "smol"]

rows = []
meta = {"times_s": {}}
cg = defaultdict(dict)  # (build, runtime, mode) -> {round trips: Ir of the client}
annotate = defaultdict(list)  # (kind, build, runtime, mode, round trips) -> lines
cg_tried = set()  # (build, runtime, mode) of every callgrind run, failed ones too
cg_runs = []  # every callgrind run as results.json keeps it: build, runtime, mode, round trips, Ir or None
builds = {}  # "current" / "baseline" -> {"hash": ..., "name": ...}
perftest_notes = []

ansi = re.compile(r"\x1b\[[0-9;]*m")
# perftest prints "-nan" for the standard deviation now and then (seen with -c UD on rxe).
lat_re = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+|-?nan)\s+([\d.]+|-?nan)\s+([\d.]+)")
bw_re = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def arg(args, flag, default):
    if flag in args:
        return args[args.index(flag) + 1]
    return default


def read_log(path):
    """The rows and notes of a run, from its console log."""
    pt = None
    block = None
    for raw_line in open(path, errors="replace"):
        line = ansi.sub("", raw_line.rstrip("\r\n"))
        if block is not None:
            if line.startswith("@@CG-ANNOTATE-END") or line.startswith("@@CG-INCL-END"):
                block = None
            else:
                annotate[block].append(line)
            continue
        if pt is not None:
            if line.startswith("@@PT-END"):
                if not pt["found"]:
                    perftest_notes.append(f"{pt['tool']} {' '.join(pt['args'])}: {pt['err'] or 'no result'}")
                pt = None
                continue
            m = lat_re.match(line)
            if m and pt["test"].endswith("_lat"):
                pt["found"] = True
                rows.append({
                    "impl": "perftest", "runtime": "-", "mode": pt["mode"], "test": pt["test"],
                    "size": int(m.group(1)), "qps": 1, "batch": 1, "iters": int(m.group(2)),
                    "median_us": float(m.group(5)), "p99_us": float(m.group(8)),
                    "mmsg_s": None, "mb_s": None,
                })
                continue
            m = bw_re.match(line)
            if m and pt["test"].endswith("_rate"):
                pt["found"] = True
                size, mpps = int(m.group(1)), float(m.group(5))
                rows.append({
                    "impl": "perftest", "runtime": "-", "mode": pt["mode"], "test": pt["test"],
                    "size": size, "qps": int(arg(pt["args"], "-q", "1")), "batch": 1,
                    "iters": int(m.group(2)), "median_us": None, "p99_us": None,
                    "mmsg_s": mpps, "mb_s": mpps * size,
                })
                continue
            if re.search(r"not available|not supported|Error|error|Couldn't|Unable", line) and not pt["err"]:
                pt["err"] = line.strip()
            continue
        if line.startswith("@@PT "):
            parts = line.split()
            test, mode = parts[1].split(":")
            pt = {"test": test, "mode": mode, "tool": parts[2], "args": parts[3:], "found": False, "err": ""}
        elif line.startswith("@@JSON "):
            try:
                rows.append(json.loads(line[len("@@JSON "):]))
            except ValueError:
                pass
        elif line.startswith("@@CG "):
            # "@@CG BUILD RUNTIME MODE N rc=.. ir=.."; logs of before the baseline had "@@CG RUNTIME N ..."
            # (the current program, event mode).
            m = (re.match(r"@@CG (\S+) (\S+) (busy|event) (\d+) rc=(\d+) ir=(\d*)", line)
                 or re.match(r"@@CG ()(\S+) ()(\d+) rc=(\d+) ir=(\d*)", line))
            if m:
                build, rt, mode, n, rc, ir = m.groups()
                key = (build or "current", rt, mode or "event")
                cg_tried.add(key)
                ok = rc == "0" and bool(ir)
                cg_runs.append({"build": key[0], "runtime": rt, "mode": key[2], "round_trips": int(n),
                                "ir": int(ir) if ok else None})
                if ok:
                    cg[key][int(n)] = int(ir)
                else:
                    perftest_notes.append(f"callgrind {' '.join(key)} {n} round trips failed: rc={rc}"
                                          + ("" if ir else ", no profile"))
        elif line.startswith("@@CG-ANNOTATE-BEGIN") or line.startswith("@@CG-INCL-BEGIN"):
            # "... BUILD RUNTIME MODE N"; before the baseline, "... RUNTIME" (current, event, longer run).
            kind = "self" if "ANNOTATE" in line else "inclusive"
            what = line.split()[1:]
            block = (kind, *what) if len(what) == 4 else (kind, "current", (what or ["?"])[0], "event", None)
        elif line.startswith("@@BUILD "):
            parts = (line.split(None, 3) + ["", ""])[:4]
            builds[parts[1]] = {"hash": parts[2], "name": parts[3].strip()}
        elif line.startswith("@@VALGRIND "):
            meta["valgrind"] = line.split(None, 1)[1]
        elif line.startswith("@@NOTE "):
            perftest_notes.append(line.split(None, 1)[1])
        elif line.startswith("@@TIME "):
            _, what, secs = line.split()
            meta["times_s"][what] = int(secs)
        elif line.startswith("@@DATE "):
            meta["date"] = line.split(None, 1)[1]
        elif line.startswith("@@KERNEL "):
            meta["kernel"] = line.split(None, 1)[1]
        elif line.startswith("@@CPU "):
            meta["cpu"] = line.split(None, 1)[1]
        elif line.startswith("@@DEVICE "):
            meta["device_info"] = line.split(None, 1)[1]
        elif line.startswith("@@PERFTEST-VERSION "):
            meta["perftest"] = line.split(None, 1)[1]
        elif line.startswith("@@BENCH-END ") and not line.endswith("rc=0"):
            perftest_notes.append("anyrdma bench " + line[len("@@BENCH-END "):])
        elif line.startswith("@@PEER ") and not line.endswith("rc=0"):
            perftest_notes.append("async-rdma " + line[len("@@PEER "):])


def read_results(path):
    """The rows and notes of a run, from the results.json an earlier report wrote."""
    global run_mode, device
    data = json.load(open(path))
    old = data["meta"]
    run_mode, device = old["mode"], old["device"]
    meta.update(old)
    rows.extend(data["rows"] + old.get("wakeups", []) + old.get("pool", []))
    builds.update(old.get("builds", {}))
    perftest_notes.extend(old.get("notes", []))
    # Every callgrind run, failed ones too; a results.json of before they were kept has the
    # instructions of the successful pairs only.
    for run in old.get("callgrind_runs") or [
            {"build": c["build"], "runtime": c["runtime"], "mode": c["mode"], "round_trips": n, "ir": ir}
            for c in old.get("cpu_cost", []) for n, ir in zip(c["iters"], c["ir"])]:
        key = (run["build"], run["runtime"], run["mode"])
        cg_tried.add(key)
        if run["ir"] is not None:
            cg[key][run["round_trips"]] = run["ir"]
    for top in old.get("callgrind_top", []):
        annotate[top["kind"], top["build"], top["runtime"], top["mode"], top["round_trips"]] = top["lines"]


if log_path is not None:
    read_log(log_path)
else:
    read_results(results_path)
meta.update(mode=run_mode, device=device)

# Wake-ups per completion (benches/wakeups.rs) are rows of their own kind.
wakeup_rows = [r for r in rows if r.get("test") == "wakeups"]
pool_rows = [r for r in rows if r.get("test", "").startswith("pool_")]
rows = [r for r in rows if r.get("test") != "wakeups" and not r.get("test", "").startswith("pool_")]
meta["wakeups"] = wakeup_rows
meta["pool"] = pool_rows
# Messaging rows (msg_lat, msg_rate) have a section of their own; the goals of issue 5 are about
# single operations.
msg_rows = [r for r in rows if r.get("test", "").startswith("msg_")]
rows = [r for r in rows if not r.get("test", "").startswith("msg_")]
meta["messaging"] = msg_rows
# Byte stream rows (issue 23: perf/src/streaming.rs, ecosystem/benches/http.rs), with the
# messenger over rdma_cm and TCP they are compared with: a section of their own.
STREAM_TESTS = ("stream_bw", "stream_owned_bw", "stream_lat", "cm_msg_bw", "cm_msg_lat", "tcp_bw", "tcp_lat", "http1_rps")
stream_rows = [r for r in rows if r.get("test") in STREAM_TESTS]
rows = [r for r in rows if r.get("test") not in STREAM_TESTS]
meta["streams"] = stream_rows
# Datagram rows (issue 24: perf/src/datagrams.rs and perftest -c UD): a section of their own.
ud_rows = [r for r in rows if r.get("test", "").startswith("ud_")]
rows = [r for r in rows if not r.get("test", "").startswith("ud_")]
meta["datagrams"] = ud_rows

# Instructions per round trip: the difference of the shortest and the longest run over their
# difference in round trips (set-up and tear-down cancel).
cpu = {}
for (build, rt, mode), runs in cg.items():
    if len(runs) >= 2:
        (n1, i1), (n2, i2) = min(runs.items()), max(runs.items())
        cpu[build, rt, mode] = {"build": build, "runtime": rt, "mode": mode, "iters": [n1, n2], "ir": [i1, i2],
                                "ir_per_round_trip": (i2 - i1) / (n2 - n1)}
meta["cpu_cost"] = list(cpu.values())
meta["builds"] = builds
meta["notes"] = perftest_notes
if log_path is not None:
    # What a report from this results.json needs besides the rows (report.py --results).
    meta["callgrind_runs"] = cg_runs
    meta["callgrind_top"] = [{"kind": k[0], "build": k[1], "runtime": k[2], "mode": k[3], "round_trips": k[4],
                              "lines": v} for k, v in annotate.items()]

json.dump({"meta": meta, "rows": rows + msg_rows + stream_rows + ud_rows}, open(f"{out_dir}/results.json", "w"), indent=1)


# ---- Markdown ------------------------------------------------------------------------------
def find(impl, test, mode, size, runtime=None, qps=1, batch=1):
    for r in rows:
        if (r["impl"] == impl and r["test"] == test and r["mode"] == mode and r["size"] == size
                and r.get("qps", 1) == qps and r.get("batch", 1) == batch
                and (runtime is None or r["runtime"] == runtime)):
            return r
    return None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def cell(v, r=None, prec=2):
    if v is None:
        return "-"
    s = f"{v:.{prec}f}"
    if r is not None:
        s += f" ({r:.2f}x)"
    return s


md = []
tool = meta.get("valgrind", "valgrind") if run_mode == "callgrind" else meta.get("perftest", "perftest")
md.append(f"Device `{device}`, {meta.get('device_info', '')} kernel {meta.get('kernel', '?')}, "
          f"CPU {meta.get('cpu', '?')}, {tool}, run `{run_mode}` at {meta.get('date', '?')}.")
md.append("")


LAT_TESTS = [("write_lat", "busy"), ("write_imm_lat", "busy"), ("send_lat", "busy"), ("read_lat", "busy"),
             ("write_imm_lat", "event"), ("send_lat", "event"), ("read_lat", "event")]


def lat_sizes():
    return sorted({r["size"] for r in rows if r["test"].endswith("_lat")})


def ref_row(test, mode, size):
    """What a latency row is compared with: perftest, or for `write_imm_lat` the raw verbs loop."""
    if test == "write_imm_lat":
        return find("raw", test, mode, size)
    return find("perftest", test, mode, size)


def lat_ratios(mode, rts, max_size=None):
    """(anyrdma median / reference median, label) of every latency row of `mode`."""
    out = []
    for test, m in LAT_TESTS:
        if m != mode:
            continue
        for size in lat_sizes():
            if max_size is not None and size > max_size:
                continue
            ref = ref_row(test, mode, size)
            for rt in rts:
                r = find("anyrdma", test, mode, size, rt)
                if ref and r:
                    out.append((ratio(r["median_us"], ref["median_us"]), f"{rt} {test} {size} B"))
    return out


def worst(pairs):
    pairs = [p for p in pairs if p[0] is not None]
    return max(pairs, key=lambda p: p[0]) if pairs else (None, "")


def full_run_tables():
    """Latency, message rate and the goals of issue 5 (a callgrind-only run has none of these)."""
    md.append("Ratios are against perftest in the same boot (`write_imm_lat`: against the raw verbs loop, as "
              "perftest has no such test). Latency: one-way (half the round trip; reads: the whole read), µs.")
    md.append("")

    lat_tests = LAT_TESTS
    sizes = lat_sizes()
    impls = [("raw", "raw")] + [("anyrdma", rt) for rt in RUNTIMES] + [("async-rdma", "tokio-mt")]

    for metric, title in (("median_us", "median"), ("p99_us", "99th percentile")):
        md.append(f"### Latency, {title} (µs)")
        md.append("")
        md.append("| test | mode | size | perftest | raw verbs | " + " | ".join(f"anyrdma {rt}" for rt in RUNTIMES) + " | async-rdma |")
        md.append("|---|---|---:|---:|---:|" + "---:|" * len(RUNTIMES) + "---:|")
        for test, mode in lat_tests:
            for size in sizes:
                ref = ref_row(test, mode, size)
                refv = ref[metric] if ref else None
                p = find("perftest", test, mode, size)
                cells = [cell(p[metric]) if p else "-"]
                any_found = p is not None
                for impl, rt in impls:
                    r = find(impl, test, mode, size, rt)
                    any_found |= r is not None
                    rr = None if (impl == "raw" and test == "write_imm_lat") else ratio(r[metric] if r else None, refv)
                    cells.append(cell(r[metric] if r else None, rr))
                if any_found:
                    md.append(f"| {test} | {mode} | {size} | " + " | ".join(cells) + " |")
        md.append("")

    md.append("### Message rate (Mmsg/s) and bandwidth")
    md.append("")
    md.append("`batch 16`: 16 work requests per doorbell, only the last signaled (`qp.batch()`); perftest "
              "signals one in 100 (CQ moderation) in every row. Window: 128 work requests in flight per QP.")
    md.append("")
    md.append("| test | mode | size | QPs | batch | perftest | " + " | ".join(f"anyrdma {rt}" for rt in RUNTIMES) + " |")
    md.append("|---|---|---:|---:|---:|---:|" + "---:|" * len(RUNTIMES))
    rate_keys = sorted({(r["test"], r["mode"], r["size"], r.get("qps", 1), r.get("batch", 1))
                        for r in rows if r["test"].endswith("_rate")},
                       key=lambda k: (k[0], k[1], k[2], k[3], k[4]))
    for test, mode, size, qps, batch in rate_keys:
        p = find("perftest", test, mode, size, qps=qps)
        pv = p["mmsg_s"] if p else None
        cells = [cell(pv, None, 4) if batch == 1 else "(" + cell(pv, None, 4) + ")"]
        for rt in RUNTIMES:
            r = find("anyrdma", test, mode, size, rt, qps, batch)
            cells.append(cell(r["mmsg_s"] if r else None, ratio(r["mmsg_s"] if r else None, pv), 4))
        label = f"{size}" + (f" ({size * (pv or 0):.0f} MB/s perftest)" if size > 4096 and pv else "")
        md.append(f"| {test} | {mode} | {label} | {qps} | {batch} | " + " | ".join(cells) + " |")
    md.append("")

    # ---- Goals -----------------------------------------------------------------------------------
    goals = []

    for mode, limit in (("busy", 1.05), ("event", 1.3)):
        rs = lat_ratios(mode, RUNTIMES)
        w, where = worst(rs)
        held = [x for x in rs if x[0] <= limit]
        best_rt = {}
        for rt in RUNTIMES:
            w_rt, _ = worst(lat_ratios(mode, [rt]))
            best_rt[rt] = w_rt
        goals.append((f"{mode} latency <= {limit}x perftest (median)",
                      w is not None and w <= limit,
                      f"{len(held)}/{len(rs)} rows hold; worst {cell(w)}x ({where}); worst per runtime: "
                      + ", ".join(f"{k} {cell(v)}" for k, v in best_rt.items())))

    for batch in (1, 16):
        rs = []
        for test in ("write_rate", "send_rate"):
            for mode in ("busy", "event"):
                p = find("perftest", test, mode, 64, qps=1)
                for rt in RUNTIMES:
                    r = find("anyrdma", test, mode, 64, rt, 1, batch)
                    if p and r:
                        rs.append((ratio(r["mmsg_s"], p["mmsg_s"]), f"{rt} {test} {mode}"))
        if rs:
            low = min(rs, key=lambda x: x[0])
            goals.append((f"message rate >= 0.95x perftest on one QP, batch {batch}",
                          low[0] >= 0.95,
                          f"{sum(1 for x in rs if x[0] >= 0.95)}/{len(rs)} rows hold; lowest {low[0]:.2f}x ({low[1]})"))

    scal = []
    for test in ("write_rate", "send_rate"):
        for mode in ("busy", "event"):
            p1, p16 = find("perftest", test, mode, 64, qps=1), find("perftest", test, mode, 64, qps=max(
                [r.get("qps", 1) for r in rows if r["test"] == test] or [1]))
            if not (p1 and p16) or p16["qps"] == 1:
                continue
            ps = p16["mmsg_s"] / p1["mmsg_s"]
            for rt in RUNTIMES:
                a1, a16 = find("anyrdma", test, mode, 64, rt, 1, 1), find("anyrdma", test, mode, 64, rt, p16["qps"], 1)
                if a1 and a16:
                    scal.append((a16["mmsg_s"] / a1["mmsg_s"], ps, f"{rt} {test} {mode} {p16['qps']} QPs"))
    if scal:
        bad = [s for s in scal if s[0] < s[1]]
        goals.append(("scaling with QPs at least as good as perftest",
                      not bad,
                      f"{len(scal) - len(bad)}/{len(scal)} rows hold; "
                      + "; ".join(f"{s[2]}: {s[0]:.2f}x vs perftest {s[1]:.2f}x" for s in (bad or scal)[:4])))

    within = []
    for r0 in rows:
        if r0["impl"] != "anyrdma" or r0["runtime"] != RUNTIMES[0]:
            continue
        vals = {}
        for rt in RUNTIMES:
            r = find("anyrdma", r0["test"], r0["mode"], r0["size"], rt, r0.get("qps", 1), r0.get("batch", 1))
            if r:
                vals[rt] = r["median_us"] if r["median_us"] is not None else (1 / r["mmsg_s"] if r["mmsg_s"] else None)
        vals = {k: v for k, v in vals.items() if v}
        if len(vals) == len(RUNTIMES):
            best = min(vals.values())
            worst_rt = max(vals, key=vals.get)
            within.append((vals[worst_rt] / best, f"{r0['test']} {r0['mode']} {r0['size']} B q{r0.get('qps', 1)} b{r0.get('batch', 1)}: {worst_rt}"))
    if within:
        bad = [w for w in within if w[0] > 1.1]
        goals.append(("every runtime within 10% of the best one",
                      not bad,
                      f"{len(within) - len(bad)}/{len(within)} rows hold"
                      + ("; worst: " + ", ".join(f"{w[1]} {w[0]:.2f}x" for w in sorted(bad, reverse=True)[:4]) if bad else "")))

    faster = []
    for r in rows:
        if r["impl"] != "async-rdma":
            continue
        for rt in RUNTIMES:
            for mode in ("busy", "event"):
                a = find("anyrdma", r["test"], mode, r["size"], rt)
                if a:
                    faster.append((a["median_us"] < r["median_us"], a["median_us"] / r["median_us"],
                                   f"{rt} {mode} {r['test']} {r['size']} B"))
    if faster:
        bad = [f for f in faster if not f[0]]
        goals.append(("faster than async-rdma on every row",
                      not bad,
                      f"{len(faster) - len(bad)}/{len(faster)} rows hold; anyrdma/async-rdma from "
                      f"{min(f[1] for f in faster):.2f}x to {max(f[1] for f in faster):.2f}x"
                      + ("; slower: " + ", ".join(f[2] for f in bad[:4]) if bad else "")))
    elif run_mode:
        goals.append(("faster than async-rdma on every row", False, "no async-rdma rows (see notes)"))

    goals_table("Goals (issue 5)", goals)


def goals_table(title, goals):
    md.append(f"### {title}")
    md.append("")
    md.append("| goal | holds | detail |")
    md.append("|---|---|---|")
    for name, ok, detail in goals:
        md.append(f"| {name} | {'yes' if ok else '**no**'} | {detail} |")
    md.append("")


def bound_goal(name, pairs, limit, at_least=False):
    """A goal over (value, label) rows: every value at most (or at least) `limit`."""
    pairs = [p for p in pairs if p[0] is not None]
    if not pairs:
        return (name, False, "no rows in this run")
    held = [p for p in pairs if (p[0] >= limit if at_least else p[0] <= limit)]
    missed = sorted((p for p in pairs if p not in held), key=lambda p: p[0], reverse=not at_least)
    detail = f"{len(held)}/{len(pairs)} rows hold"
    if missed:
        detail += "; missed: " + ", ".join(f"{label} {value:.2f}x" for value, label in missed[:6])
        if len(missed) > 6:
            detail += f" and {len(missed) - 6} more"
    else:
        edge = min(pairs) if at_least else max(pairs)
        detail += f"; {'lowest' if at_least else 'highest'} {edge[0]:.2f}x ({edge[1]})"
    return (name, not missed, detail)


def fast_path_goals():
    """The goals of issue 12, from this run's rows: instructions per round trip against raw verbs,
    the spread between runtimes, unbatched message rate and latency against perftest."""
    goals = []
    for mode, limit in (("busy", 1.3), ("event", 2.0)):
        raw = cpu.get(("current", "raw", mode))
        pairs = []
        for rt in RUNTIMES:
            c = cpu.get(("current", rt, mode))
            if c and raw:
                pairs.append((c["ir_per_round_trip"] / raw["ir_per_round_trip"], f"{rt}"))
        goals.append(bound_goal(f"Ir per 8 B write-with-imm round trip, {mode}: <= {limit}x raw verbs",
                                pairs, limit))
    for mode in ("busy", "event"):
        counts = {rt: cpu[("current", rt, mode)]["ir_per_round_trip"]
                  for rt in RUNTIMES if ("current", rt, mode) in cpu}
        pairs = [(v / min(counts.values()), rt) for rt, v in counts.items()] if counts else []
        goals.append(bound_goal(f"Ir per round trip, {mode}: every runtime within 1.25x of the best", pairs, 1.25))
    for qps, limit in ((1, 1.0), (4, 0.95), (16, 0.95)):
        pairs = []
        for test in ("send_rate", "write_rate"):
            p = find("perftest", test, "busy", 64, qps=qps)
            for rt in RUNTIMES:
                r = find("anyrdma", test, "busy", 64, rt, qps, 1)
                if p and r:
                    pairs.append((ratio(r["mmsg_s"], p["mmsg_s"]), f"{rt} {test}"))
        goals.append(bound_goal(f"message rate 64 B, busy, unbatched, {qps} QP{'s' if qps > 1 else ''}: "
                                f">= {limit}x perftest", pairs, limit, at_least=True))
    for mode, limit in (("busy", 1.1), ("event", 1.2)):
        goals.append(bound_goal(f"{mode} latency 8 B to 4 KiB (median): <= {limit}x perftest",
                                lat_ratios(mode, RUNTIMES, max_size=4096), limit))
    goals_table("Goals (issue 12: the fast path)", goals)


CG_LIMIT = 1.02  # the baseline goal: no row more than 2% above the baseline


def impl_name(rt):
    return "raw verbs (rdma-sys)" if rt == "raw" else f"anyrdma {rt}"


def build_name(tag):
    b = builds.get(tag)
    if not b:
        return tag
    return f"`{b['name']}` (`{b['hash']}`)" if b["name"] else f"`{b['hash']}`"


def callgrind_rows():
    """(runtime, mode) of every row run, failed ones too: raw verbs first, then the runtimes, busy before event."""
    order = ["raw"] + RUNTIMES
    keys = {(rt, mode) for (_, rt, mode) in cg_tried}
    return sorted(keys, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], k[1]))


def callgrind_goal(keys):
    """The baseline goal: (holds, detail)."""
    changes, missing = [], []
    for rt, mode in keys:
        c, b = cpu.get(("current", rt, mode)), cpu.get(("baseline", rt, mode))
        if c and b:
            changes.append((c["ir_per_round_trip"] / b["ir_per_round_trip"] - 1, f"{rt} {mode}"))
        else:
            missing.append(f"{rt} {mode}")
    over = [x for x in changes if x[0] > CG_LIMIT - 1]
    detail = f"{len(changes) - len(over)}/{len(keys)} rows hold"
    if changes:
        w = max(changes)
        detail += f"; worst {w[0] * 100:+.1f}% ({w[1]})"
        ev = [x for x in changes if x[1].endswith(" event")]
        if ev and max(ev) != w:
            detail += f", worst event-mode row {max(ev)[0] * 100:+.1f}% ({max(ev)[1]})"
    if missing:
        detail += "; no comparison for " + ", ".join(missing)
    return not over and not missing and bool(changes), detail


def callgrind_section():
    """Instructions per round trip for every runtime and poll mode, against raw verbs and the baseline."""
    if not cg_tried:
        return
    keys = callgrind_rows()
    has_base = any(b == "baseline" for (b, _, _) in cpu) or "baseline" in builds
    iters = sorted({n for c in cpu.values() for n in c["iters"]})
    runs = " and ".join(f"{n:,}" for n in iters) or "two different numbers of"
    md.append("### CPU cost per round trip (callgrind)")
    md.append("")
    md.append("8 B `write_with_imm` ping-pong, the client under `valgrind --tool=callgrind`, its server (the same "
              "program) natively: instructions (Ir) of the whole client process per round trip, computed as "
              "(Ir of the longer run - Ir of the shorter run) / (difference in round trips), from runs of "
              f"{runs} round trips, so that set-up and tear-down cancel. Kernel time is not counted. "
              "The ping-pong is paced (`ANYRDMA_BENCH_PACE`, 2 ms; see `Pacing` in perf/src/pacing.rs), so that "
              "every round trip takes the same path whatever the timing: "
              "**event** (`PollMode::Event { spin: 0 }`; raw verbs: poll, arm, poll, `ibv_get_cq_event`): the "
              "server answers late, so a round trip posts and completes one write-with-imm, completes and "
              "re-posts one receive, and always arms and sleeps on the completion channel once. "
              "**busy** (`PollMode::Busy`; raw verbs: an `ibv_poll_cq` loop): the client pauses after posting, "
              "so the reply is there at its first poll and no empty poll is counted. "
              "Repeated runs of one program agree to a fraction of a percent (raw verbs rows against their "
              "baseline show it); the two runs' Ir are shown to judge by.")
    md.append("")
    cur = builds.get("current")
    line = "Current: the working tree" + (f", {build_name('current')}" if cur else "") + "."
    if has_base:
        line += (f" Baseline: {build_name('baseline')}, built in a git worktree (target/bench/baseline-src) "
                 "and measured in the same boot, row by row interleaved with the current program. "
                 "Change: current / baseline - 1. `x raw`: the current program against raw verbs of the same "
                 "mode.")
    else:
        line += " `x raw`: against raw verbs of the same mode."
    md.append(line)
    md.append("")
    head = "| implementation | mode | Ir per round trip | x raw |"
    rule = "|---|---|---:|---:|"
    if has_base:
        head += " baseline | change |"
        rule += "---:|---:|"
    head += f" Ir of the runs ({' / '.join(f'{n:,}' for n in iters)}) |"
    rule += "---|"
    if has_base:
        head += " baseline's runs |"
        rule += "---|"
    md.append(head)
    md.append(rule)

    def per(c):
        return f"{c['ir_per_round_trip']:,.0f}" if c else "-"

    def both(c):
        return " / ".join(f"{i:,}" for i in c["ir"]) if c else "-"

    for rt, mode in keys:
        c, b, raw = cpu.get(("current", rt, mode)), cpu.get(("baseline", rt, mode)), cpu.get(("current", "raw", mode))
        x_raw = ratio(c["ir_per_round_trip"] if c else None, raw["ir_per_round_trip"] if raw else None)
        cells = [impl_name(rt), mode, per(c), f"{x_raw:.2f}x" if x_raw is not None else "-"]
        if has_base:
            change = ratio(c["ir_per_round_trip"] if c else None, b["ir_per_round_trip"] if b else None)
            ch = "-" if change is None else f"{(change - 1) * 100:+.1f}%"
            cells += [per(b), f"**{ch}**" if change is not None and change > CG_LIMIT else ch]
        cells.append(both(c))
        if has_base:
            cells.append(both(b))
        md.append("| " + " | ".join(cells) + " |")
    if has_base:
        ok, detail = callgrind_goal(keys)
        md.append("")
        md.append(f"Goal: no more than {(CG_LIMIT - 1) * 100:.0f}% more instructions than the baseline on any row: "
                  f"{'yes' if ok else '**no**'}; {detail}.")
    for mode in ("event", "busy"):
        c, raw = cpu.get(("current", "tokio-ct", mode)), cpu.get(("current", "raw", mode))
        if c and raw:
            md.append("")
            more = c["ir_per_round_trip"] - raw["ir_per_round_trip"]
            md.append(f"In {mode} mode, anyrdma (Tokio current-thread) spends {abs(more):,.0f} "
                      f"{'more' if more >= 0 else 'fewer'} instructions per round trip than raw verbs "
                      f"({c['ir_per_round_trip'] / raw['ir_per_round_trip']:.2f}x).")
    # Tokio current-thread event first, then raw verbs event, then the rest; self cost before inclusive.
    for key in sorted(annotate, key=lambda k: (k[3] != "event", k[2] != "tokio-ct", k[1], k[2], k[3],
                                               k[0] != "self")):
        kind, build, rt, mode, n = key
        run = f"{int(n):,} round trips" if n else "longer run"
        md.append("")
        md.append(f"Top functions, {kind} cost, {impl_name(rt)} {mode} ({build}, {run}):")
        md.append("")
        md.append("```")
        md.extend(l[:160] for l in annotate[key][:25 if kind == 'self' else 30])
        md.append("```")
    md.append("")


def wakeups_section():
    if not wakeup_rows:
        return
    tasks = sorted({r["tasks"] for r in wakeup_rows})
    runtimes = [rt for rt in ("tokio-ct", "tokio-mt", "async-std", "smol")
                if any(r["runtime"] == rt for r in wakeup_rows)]
    messages = sorted({r["messages"] for r in wakeup_rows})
    md.append("### Wake-ups per completion (many tasks waiting on one CQ)")
    md.append("")
    md.append(f"N tasks each await one receive of one completion queue (event mode) while "
              f"{'/'.join(map(str, messages))} messages arrive; every poll of a receive's future after its "
              f"first counts as a wake-up (benches/wakeups.rs). Goal (issue 8): at most 2, whatever N.")
    md.append("")
    md.append("| runtime | " + " | ".join(f"{n} task{'s' if n != 1 else ''}" for n in tasks) + " |")
    md.append("|---|" + "---|" * len(tasks))
    worst = 0.0
    for rt in runtimes:
        cells = []
        for n in tasks:
            found = [r["per_completion"] for r in wakeup_rows if r["runtime"] == rt and r["tasks"] == n]
            cells.append(f"{found[0]:.2f}" if found else "-")
            worst = max([worst] + found)
        md.append(f"| {rt} | " + " | ".join(cells) + " |")
    md.append("")
    md.append(f"Worst: {worst:.2f} wake-ups per completion: goal {'met' if worst <= 2 else 'missed'}.")
    md.append("")


def pool_section():
    allocs = sorted((r for r in pool_rows if r["test"] == "pool_alloc"), key=lambda r: r["size"])
    pings = {r["variant"]: r["median_us"] for r in pool_rows if r["test"] == "pool_ping_pong"}
    if not allocs and not pings:
        return
    md.append("### Registered-memory pool")
    md.append("")
    md.append("Median time of one allocation and drop (benches/pool.rs): from a warm `MemoryPool` "
              "(batches of 1,000) and with `pd.alloc` (one registration each). Goals (issue 9): a pool "
              "allocation under 100 ns, at least 100x cheaper than registering.")
    md.append("")
    md.append("| size | pool (ns) | pd.alloc (ns) | pd.alloc / pool |")
    md.append("|---:|---:|---:|---:|")
    for r in allocs:
        md.append(f"| {r['size']} B | {r['pool_ns']:.1f} | {r['register_ns']:,.0f} | "
                  f"{r['register_ns'] / r['pool_ns']:,.0f}x |")
    md.append("")
    if allocs:
        worst_ns = max(r["pool_ns"] for r in allocs)
        worst_ratio = min(r["register_ns"] / r["pool_ns"] for r in allocs)
        md.append(f"Slowest pool allocation {worst_ns:.1f} ns (goal < 100: "
                  f"{'met' if worst_ns < 100 else 'missed'}); smallest advantage {worst_ratio:,.0f}x "
                  f"(goal >= 100x: {'met' if worst_ratio >= 100 else 'missed'}).")
        md.append("")
    if "reuse" in pings and "fresh" in pings:
        ratio = pings["fresh"] / pings["reuse"]
        md.append(f"Send ping-pong, 64 B, Tokio current-thread, event mode, median round trip: reusing "
                  f"its buffers {pings['reuse']:.2f} µs, a fresh pool buffer per send and receive "
                  f"{pings['fresh']:.2f} µs ({ratio:.3f}x; goal <= 1.05x: "
                  f"{'met' if ratio <= 1.05 else 'missed'}).")
        md.append("")


def messaging_section():
    if not msg_rows:
        return

    def msg(test, rt, mode, size, senders=1):
        for r in msg_rows:
            if (r["test"] == test and r["runtime"] == rt and r["mode"] == mode and r["size"] == size
                    and r.get("senders", 1) == senders):
                return r
        return None

    def size_name(n):
        return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"

    def with_ratios(text, ratios):
        """`text`, then the ratios that are known, as "(1.02x name, ...)"."""
        known = [f"{x:.2f}x {name}" for x, name in ratios if x is not None]
        return text + (" (" + ", ".join(known) + ")" if known else "")

    lat_sizes = sorted({r["size"] for r in msg_rows if r["test"] == "msg_lat"})
    rate_cols = sorted({(r["size"], r.get("senders", 1)) for r in msg_rows if r["test"] == "msg_rate"})
    small = [c for c in rate_cols if c[0] <= 4096]
    large = [c for c in rate_cols if c[0] > 4096]
    md.append("### Messaging (`anyrdma::msg`)")
    md.append("")
    md.append("`Messenger` with its default options (depth 64, eager limit 8 KiB: larger messages go by "
              "rendezvous, a registration of the copy and an RDMA read by the receiver) over one queue pair "
              "(perf/src/messaging.rs). Message rate: S concurrent senders on one task, the receiver "
              "takes every message with `recv`; in brackets, against the `send_rate` row of the same runtime "
              "and mode (64 B, 1 QP, unbatched) and against perftest's `ib_send_bw`. Latency: half the "
              "round trip of a send/recv ping-pong; in brackets against `send_lat` of the same runtime and "
              "mode (64 B). Bandwidth: MB/s; in brackets against perftest's `ib_write_bw` 64 KiB and the "
              "same runtime's `write_rate` 64 KiB (busy).")
    md.append("")
    head = ["runtime", "mode"]
    head += [f"{size_name(sz)} x{n} (Mmsg/s)" for sz, n in small]
    head += [f"latency {size_name(sz)} (µs)" for sz in lat_sizes]
    head += [f"{size_name(sz)} (MB/s)" for sz, n in large]
    md.append("| " + " | ".join(head) + " |")
    md.append("|---|---|" + "---:|" * (len(head) - 2))
    pt_send = find("perftest", "send_rate", "busy", 64)
    pt_bw = find("perftest", "write_rate", "busy", 65536)
    worst_rate, worst_bw = None, None
    for rt in RUNTIMES:
        for mode in ("busy", "event"):
            cells = []
            send_ref = find("anyrdma", "send_rate", mode, 64, rt)
            for sz, n in small:
                r = msg("msg_rate", rt, mode, sz, n)
                v = r["mmsg_s"] if r else None
                x_send = ratio(v, send_ref["mmsg_s"] if send_ref else None)
                x_pt = ratio(v, pt_send["mmsg_s"] if pt_send else None)
                if sz == 64 and x_send is not None:
                    worst_rate = min(worst_rate, (x_send, rt, mode, n)) if worst_rate else (x_send, rt, mode, n)
                cells.append(with_ratios("-" if v is None else f"{v:.4f}",
                                         [(x_send, "send_rate"), (x_pt, "perftest")]))
            lat_ref = find("anyrdma", "send_lat", mode, 64, rt)
            for sz in lat_sizes:
                r = msg("msg_lat", rt, mode, sz)
                v = r["median_us"] if r else None
                x = ratio(v, lat_ref["median_us"] if lat_ref and sz == 64 else None)
                cells.append(cell(v, x))
            bw_ref = find("anyrdma", "write_rate", "busy", 65536, rt)
            for sz, n in large:
                r = msg("msg_rate", rt, mode, sz, n)
                v = r["mb_s"] if r else None
                x_pt = ratio(v, pt_bw["mb_s"] if pt_bw else None)
                x_own = ratio(v, bw_ref["mb_s"] if bw_ref else None)
                if sz == max(s for s, _ in large) and x_pt is not None:
                    worst_bw = min(worst_bw, (x_pt, rt, mode)) if worst_bw else (x_pt, rt, mode)
                cells.append(with_ratios("-" if v is None else f"{v:.1f}",
                                         [(x_pt, "perftest"), (x_own, "write_rate")]))
            if any(c != "-" for c in cells):
                md.append(f"| {rt} | {mode} | " + " | ".join(cells) + " |")
    md.append("")
    if worst_rate:
        x, rt, mode, n = worst_rate
        md.append(f"Goal (issue 11): 64 B message rate at least 0.9x the `send_rate` row of the same runtime "
                  f"and mode: lowest {x:.2f}x ({rt} {mode}, {n} sender{'s' if n > 1 else ''}): "
                  f"{'met' if x >= 0.9 else 'missed'}.")
    if worst_bw:
        x, rt, mode = worst_bw
        md.append(f"Goal (issue 11): {size_name(max(s for s, _ in large))} bandwidth at least 0.9x the 64 KiB "
                  f"`write_rate` bandwidth of perftest: lowest {x:.2f}x ({rt} {mode}): "
                  f"{'met' if x >= 0.9 else 'missed'}.")
    md.append("")


def datagrams_section():
    if not ud_rows:
        return

    def get(impl, test, mode, size, rt=None, qps=1):
        for r in ud_rows:
            if (r["impl"] == impl and r["test"] == test and r["mode"] == mode and r["size"] == size
                    and r.get("qps", 1) == qps and (rt is None or r["runtime"] == rt)):
                return r
        return None

    md.append("### Datagrams (UD, `anyrdma::ud`)")
    md.append("")
    md.append("`UdQueuePair` against perftest's `ib_send_lat -c UD` and `ib_send_bw -c UD` on the same device "
              "in the same boot (perf/src/datagrams.rs), measured the way perftest measures: each side posts "
              "`min(iters, 16000)` receives before the first send (perftest's receive depth for UD; receive "
              "buffers of the MTU, the 40-byte header in anyrdma's own block) and none inside the timed loop. "
              "Latency: a ping-pong of datagram sends, each send signaled and awaited; half the round trip, "
              "median and 99th percentile, µs. Message rate: 64 B datagrams, 128 sends in flight per QP, each "
              "client QP sending to its own server QP; Mmsg/s of the sender from the first post to the last "
              "completion (perftest's figure; perftest moderates completions every 100 sends, anyrdma signals "
              "every 16th). Ratios are against perftest.")
    md.append("")
    sizes = sorted({r["size"] for r in ud_rows if r["test"] == "ud_send_lat"})
    for metric, title in (("median_us", "median"), ("p99_us", "99th percentile")):
        md.append(f"**Latency, {title} (µs)**")
        md.append("")
        md.append("| mode | size | perftest | " + " | ".join(f"anyrdma {rt}" for rt in RUNTIMES) + " |")
        md.append("|---|---:|---:|" + "---:|" * len(RUNTIMES))
        for mode in ("busy", "event"):
            for size in sizes:
                p = get("perftest", "ud_send_lat", mode, size)
                pv = p[metric] if p else None
                cells = [cell(pv)]
                found = p is not None
                for rt in RUNTIMES:
                    r = get("anyrdma", "ud_send_lat", mode, size, rt)
                    found |= r is not None
                    v = r[metric] if r else None
                    cells.append(cell(v, ratio(v, pv)))
                if found:
                    md.append(f"| {mode} | {size} | " + " | ".join(cells) + " |")
        md.append("")
    qps_list = sorted({r.get("qps", 1) for r in ud_rows if r["test"] == "ud_send_rate"})
    if qps_list:
        md.append("**Message rate, 64 B (Mmsg/s)**")
        md.append("")
        md.append("| mode | QPs | perftest | " + " | ".join(f"anyrdma {rt}" for rt in RUNTIMES) + " |")
        md.append("|---|---:|---:|" + "---:|" * len(RUNTIMES))
        for mode in ("busy", "event"):
            for qps in qps_list:
                p = get("perftest", "ud_send_rate", mode, 64, qps=qps)
                pv = p["mmsg_s"] if p else None
                cells = [cell(pv, None, 4)]
                for rt in RUNTIMES:
                    r = get("anyrdma", "ud_send_rate", mode, 64, rt, qps)
                    v = r["mmsg_s"] if r else None
                    cells.append(cell(v, ratio(v, pv), 4))
                md.append(f"| {mode} | {qps} | " + " | ".join(cells) + " |")
        md.append("")

    goals = []
    for mode, limit in (("busy", 1.1), ("event", 1.2)):
        pairs = []
        for size in sizes:
            p = get("perftest", "ud_send_lat", mode, size)
            for rt in RUNTIMES:
                r = get("anyrdma", "ud_send_lat", mode, size, rt)
                if p and r:
                    pairs.append((ratio(r["median_us"], p["median_us"]), f"{rt} {size} B"))
        goals.append(bound_goal(f"{mode} datagram latency (median) <= {limit}x perftest", pairs, limit))
    for qps in qps_list:
        pairs = []
        for mode in ("busy", "event"):
            p = get("perftest", "ud_send_rate", mode, 64, qps=qps)
            for rt in RUNTIMES:
                r = get("anyrdma", "ud_send_rate", mode, 64, rt, qps)
                if p and r:
                    pairs.append((ratio(r["mmsg_s"], p["mmsg_s"]), f"{rt} {mode}"))
        goals.append(bound_goal(f"64 B datagram rate, {qps} QP{'s' if qps > 1 else ''}: >= 0.95x perftest",
                                pairs, 0.95, at_least=True))
    goals_table("Goals (issue 24: datagrams)", goals)


def streams_section():
    if not stream_rows:
        return

    def get(test, rt, mode, **kw):
        for r in stream_rows:
            if (r["test"] == test and r["runtime"] == rt and r["mode"] == mode
                    and all(r.get(k) == v for k, v in kw.items())):
                return r
        return None

    def size_name(n):
        return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"

    def verdict(x, limit, at_least):
        if x is None:
            return "-"
        ok = x >= limit if at_least else x <= limit
        return f"{x:.2f}x {'met' if ok else '**missed**'}"

    bw_size = next((r["size"] for r in stream_rows if r["test"] == "stream_bw"), 1 << 20)
    lat_size = next((r["size"] for r in stream_rows if r["test"] == "stream_lat"), 64)
    bw_name, lat_name = size_name(bw_size), size_name(lat_size)
    md.append("### Byte streams (`anyrdma::stream`)")
    md.append("")
    md.append(f"`RdmaStream` (perf/src/streaming.rs) against the `Messenger` it is built on, both connected "
              f"by rdma_cm through the same device (rxe0 in the VM, 169.254.77.1: rdma_cm cannot route "
              f"127.0.0.1, so not rxe_lo, whose active MTU is larger) with the same messenger options "
              f"(depth 64, eager limit 8 KiB), on the same runtime and poll mode. Bandwidth: the client writes "
              f"{bw_name} at a time (`write_all`) and reads one byte back; the server reads in place "
              f"(`fill_buf`) until it has every byte, then writes that byte; MB/s from the first write to the "
              f"byte back. The messenger sends as many {bw_name} messages the same way (`msg_rate`, one "
              f"sender). Round trip: {lat_name} written, read back whole by the peer and written back "
              f"(`write_all`, `read_exact`, no flush), half the round trip, median and 99th percentile; the "
              f"messenger's is `msg_lat` at {lat_name}. `msg` in brackets: the messaging section's row of the "
              f"same size, whose queue pair is connected by the endpoint exchange on the bench's device "
              f"(another device: not the goal's reference).")
    md.append("")
    md.append(f"| runtime | mode | stream {bw_name} (MB/s) | messenger {bw_name}, rdma_cm (MB/s) | "
              f"stream / messenger (goal >= 0.9) | stream {lat_name} median / p99 (µs) | "
              f"messenger {lat_name}, rdma_cm, median / p99 (µs) | stream / messenger (goal <= 1.2) |")
    md.append("|---|---|---:|---:|---|---:|---:|---|")
    bw_goal, lat_goal = [], []
    for rt in RUNTIMES:
        for mode in ("busy", "event"):
            sb, mb = get("stream_bw", rt, mode), get("cm_msg_bw", rt, mode)
            sl, ml = get("stream_lat", rt, mode), get("cm_msg_lat", rt, mode)
            if not any((sb, mb, sl, ml)):
                continue
            old_bw = next((r for r in msg_rows if r["test"] == "msg_rate" and r["runtime"] == rt
                           and r["mode"] == mode and r["size"] == bw_size and r.get("senders", 1) == 1), None)
            old_lat = next((r for r in msg_rows if r["test"] == "msg_lat" and r["runtime"] == rt
                            and r["mode"] == mode and r["size"] == lat_size), None)
            xb = ratio(sb["mb_s"] if sb else None, mb["mb_s"] if mb else None)
            xl = ratio(sl["median_us"] if sl else None, ml["median_us"] if ml else None)
            if xb is not None:
                bw_goal.append((xb, f"{rt} {mode}"))
            if xl is not None:
                lat_goal.append((xl, f"{rt} {mode}"))
            mb_cell = cell(mb["mb_s"] if mb else None, prec=1)
            if old_bw:
                mb_cell += f" (msg {old_bw['mb_s']:.1f})"
            ml_cell = cell(ml["median_us"] if ml else None)
            if ml and ml.get("p99_us") is not None:
                ml_cell += f" / {ml['p99_us']:.2f}"
            if old_lat:
                ml_cell += f" (msg {old_lat['median_us']:.2f})"
            sl_cell = "-" if not sl else f"{sl['median_us']:.2f} / {sl['p99_us']:.2f}"
            md.append(f"| {rt} | {mode} | {cell(sb['mb_s'] if sb else None, prec=1)} | {mb_cell} | "
                      f"{verdict(xb, 0.9, True)} | {sl_cell} | {ml_cell} | {verdict(xl, 1.2, False)} |")
    md.append("")
    for pairs, what, limit, at_least in (
            (bw_goal, f"stream_bw / messenger {bw_name} (rdma_cm) >= 0.9", 0.9, True),
            (lat_goal, f"stream_lat / messenger msg_lat {lat_name} (rdma_cm) <= 1.2", 1.2, False)):
        if not pairs:
            continue
        held = [p for p in pairs if (p[0] >= limit if at_least else p[0] <= limit)]
        far = min(pairs) if at_least else max(pairs)
        md.append(f"Goal (issue 23): {what}: {len(held)}/{len(pairs)} runtime and mode rows hold; "
                  f"{'lowest' if at_least else 'highest'} {far[0]:.2f}x ({far[1]}): "
                  f"{'met' if len(held) == len(pairs) else 'missed'}.")
        md.append("")

    owned = [(rt, mode, get("stream_owned_bw", rt, mode), get("stream_bw", rt, mode))
             for rt in RUNTIMES for mode in ("busy", "event")]
    owned = [o for o in owned if o[2]]
    if owned:
        owned_name = size_name(owned[0][2]["size"])
        md.append(f"**Zero-copy writes** (`stream_owned_bw`): the bandwidth loop with `write_owned` of one "
                  f"{owned_name} `Vec` of the client's, again and again, instead of `write_all`: no copy (the "
                  f"server's stream reads the client's buffer where it is, registered for that write alone), and "
                  f"the buffer comes back once read and deregistered, so one write is in flight at a time where "
                  f"`write_all` returns once its copy is posted.")
        md.append("")
        md.append(f"| runtime | mode | write_owned {owned_name} (MB/s) | write_all {bw_name} (MB/s) | "
                  f"write_owned / write_all |")
        md.append("|---|---|---:|---:|---:|")
        for rt, mode, o, c in owned:
            x = ratio(o["mb_s"], c["mb_s"] if c else None)
            md.append(f"| {rt} | {mode} | {cell(o['mb_s'], prec=1)} | {cell(c['mb_s'] if c else None, prec=1)} | "
                      f"{'-' if x is None else f'{x:.2f}x'} |")
        md.append("")

    tcp = [(rt, get("tcp_bw", rt, "event"), get("tcp_lat", rt, "event")) for rt in RUNTIMES]
    tcp = [t for t in tcp if t[1] or t[2]]
    if tcp:
        md.append("**TCP over the guest's loopback, for orientation only.** The same loops over each runtime's "
                  "own TCP on 127.0.0.1 in the same guest (kernel loopback: no NIC, no wire; poll modes do not "
                  "apply). The RDMA rows run on an emulated NIC (Soft-RoCE in a TCG guest), so this says "
                  "nothing about RDMA hardware against TCP; it only places the figures above.")
        md.append("")
        md.append(f"| runtime | TCP {bw_name} (MB/s) | TCP {lat_name} median / p99 (µs) |")
        md.append("|---|---:|---:|")
        for rt, b, l in tcp:
            lat = "-" if not l else f"{l['median_us']:.2f} / {l['p99_us']:.2f}"
            md.append(f"| {rt} | {cell(b['mb_s'] if b else None, prec=1)} | {lat} |")
        md.append("")

    http = [r for r in stream_rows if r["test"] == "http1_rps"]
    if http:
        conns = sorted({r["concurrency"] for r in http})
        size = http[0]["size"]
        md.append(f"**HTTP/1.1 over anyrdma** (ecosystem/benches/http.rs): hyper 1.x client and server in two "
                  f"processes, `POST /echo` of {size_name(size)} (the body comes back, checked byte for byte), C "
                  f"connections with one request in flight on each; requests per second over the whole run, and "
                  f"the median time of one request. Streams connect through rdma_cm as above. The `tcp` rows are "
                  f"the same server and client over Tokio's TCP on the guest's loopback: **orientation only**, "
                  f"as above. hyper runs on Tokio only.")
        md.append("")
        md.append("| runtime | transport | mode | " + " | ".join(
            f"{c} conn{'s' if c != 1 else ''}: req/s (median µs)" for c in conns) + " |")
        md.append("|---|---|---|" + "---:|" * len(conns))
        for rt in RUNTIMES:
            for transport, mode in (("rdma", "busy"), ("rdma", "event"), ("tcp", "-")):
                found = [get("http1_rps", rt, mode, transport=transport, concurrency=c) for c in conns]
                if not any(found):
                    continue
                cells = ["-" if not r else f"{r['rps']:,.0f} ({r['median_us']:.1f})" if r.get("median_us")
                         else f"{r['rps']:,.0f}" for r in found]
                label = "TCP loopback (orientation only)" if transport == "tcp" else "anyrdma stream"
                md.append(f"| {rt} | {label} | {mode} | " + " | ".join(cells) + " |")
        md.append("")


if run_mode != "callgrind":
    full_run_tables()
    messaging_section()
    streams_section()
    datagrams_section()
    wakeups_section()
    pool_section()
callgrind_section()
if run_mode == "full":
    fast_path_goals()

if perftest_notes:
    md.append("### Notes from the run")
    md.append("")
    for n in perftest_notes:
        md.append(f"- {n}")
    md.append("")
if meta["times_s"]:
    md.append("Run times in the guest: " + ", ".join(f"{k} {v} s" for k, v in meta["times_s"].items()) + ".")
    md.append("")

def draw_plots():
    """Draws the plots of this run into OUT_DIR/plots: ([(file, description)], None) or ([], why not)."""
    if run_mode == "callgrind":
        return [], None
    try:
        import plots  # benches/plots.py; needs matplotlib
    except ImportError as e:
        return [], f"no plots: {e} (scripts/bench installs matplotlib into target/bench/plot-venv)"
    folder = os.path.join(out_dir, "plots")
    shutil.rmtree(folder, ignore_errors=True)  # no plot of an earlier run stays behind
    try:
        return plots.draw(rows + msg_rows + stream_rows + ud_rows, folder), None
    except Exception as e:  # a plot that fails must not cost the tables of a run
        import traceback
        traceback.print_exc()
        return [], f"no plots: drawing them failed: {e!r}"


def with_plots(folder):
    """The report with its plots, linked from `folder` (relative to the Markdown file), above the tables."""
    if not plot_files:
        return "\n".join(md)
    links = ["### Plots", "",
             "Medians of this run, drawn from results.json by benches/plots.py; the tables below have every "
             "figure, with the 99th percentiles and the ratios. Latency and bandwidth axes are logarithmic. "
             "perftest has no event mode for RDMA writes (`ib_write_bw -e`) and no `write_with_imm` test, whose "
             "reference is the raw verbs loop.", ""]
    for name, description in plot_files:
        links += [f"![{description}]({folder}/{name})", ""]
    return "\n".join(md[:2] + links + md[2:])


plot_files, plot_error = draw_plots()
if plot_error:
    print(f"report.py: {plot_error}", file=sys.stderr)
text = with_plots("plots")
open(f"{out_dir}/results.md", "w").write(text)
print(text)

# A full run replaces the results section of BENCHMARKS.md (between the markers) with this text, its
# plots copied into bench-plots/ next to it; not without its plots (the last full run's stay).
root = os.path.normpath(os.path.join(out_dir, "..", ".."))
doc = os.path.join(root, "BENCHMARKS.md")
begin, end = "<!-- results:begin (scripts/bench writes this part) -->", "<!-- results:end -->"
if run_mode == "full" and plot_error:
    print(f"report.py: {doc} is left as it was ({plot_error})", file=sys.stderr)
    sys.exit(1)
if run_mode == "full":
    try:
        old = open(doc).read()
        if begin in old and end in old:
            shown = os.path.join(root, "bench-plots")
            os.makedirs(shown, exist_ok=True)
            for name in os.listdir(shown):
                if name.endswith(".svg") and name not in dict(plot_files):
                    os.remove(os.path.join(shown, name))
            for name, _ in plot_files:
                shutil.copyfile(os.path.join(out_dir, "plots", name), os.path.join(shown, name))
            head, rest = old.split(begin, 1)
            open(doc, "w").write(head + begin + "\n" + with_plots("bench-plots") + "\n" + end + rest.split(end, 1)[1])
            print(f"updated {doc} and {shown}")
    except OSError as e:
        print(f"report.py: cannot update {doc}: {e}", file=sys.stderr)

if run_mode == "callgrind":
    failed = [n for n in perftest_notes if n.startswith("callgrind")]
    if failed or not cpu:
        print("callgrind runs failed: " + "; ".join(failed or ["no callgrind rows"]), file=sys.stderr)
        sys.exit(1)
else:
    failed = [n for n in perftest_notes if n.startswith("anyrdma bench")]
    if failed or not any(r["impl"] == "anyrdma" for r in rows):
        print("bench runs failed: " + "; ".join(failed or ["no anyrdma rows"]), file=sys.stderr)
        sys.exit(1)
