#!/usr/bin/env python3
"""Writes docs/benchmarks.md from the results directory of scripts/bench.sh.

Usage: bench_report.py RESULTS_DIR OUTPUT_MD

RESULTS_DIR holds meta.json and, per round, scenario and hub, the files
r<round>-<scenario>-<hub>.json (muster-bench --json), .exit, .err, and .skipped
when the time budget ran out. For every scenario and metric the report gives
the median and range over the rounds for each hub, and their ratio, oriented so
that a ratio above 1 always means Muster did better.
"""

import json
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HUBS = ("muster", "node")
HUB_NAMES = {"muster": "Muster", "node": "Node"}
FILE_RE = re.compile(r"^r(\d+)-(.+)-(muster|node)\.exit$")

# Direction of each metric: "up" when higher is better, "down" when lower is
# better, None for figures that are context rather than a score.
UP, DOWN = "up", "down"


def resources_rows(res, op):
    """Hub CPU per operation, hub memory and generator CPU of one interval."""
    if not res:
        return []
    rows = [(f"hub CPU, µs per {op}", res.get("hub_cpu_us_per_op"), DOWN)]
    rss = res.get("hub_rss_after_kib")
    rows.append(("hub RSS after, MiB", rss / 1024 if rss is not None else None, DOWN))
    rows.append(("hub CPU, % of one core", res.get("hub_cpu_pct"), None))
    rows.append(("generator CPU, % of one core", res.get("gen_cpu_pct"), None))
    return rows


def lat(summary, key):
    return summary.get(key) if summary else None


def roundtrip_rows(report):
    rows, best = [], None
    for mode in report.get("roundtrip", []):
        if mode["mode"] == "rate":
            name = f"rate {mode['target_rate']}/s"
        else:
            name = f"max, concurrency {mode['concurrency']}"
            best = max(best or 0, mode["throughput_per_s"])
        latency = mode.get("latency_ms")
        rows += [
            (f"{name}: runs/s", mode["throughput_per_s"], UP),
            (f"{name}: p50 ms", lat(latency, "p50_ms"), DOWN),
            (f"{name}: p99 ms", lat(latency, "p99_ms"), DOWN),
            (f"{name}: errors", mode["errors"], "count"),
            (f"{name}: stuck runs", mode["stuck"], "count"),
        ]
        rows += [(f"{name}: {label}", value, d) for label, value, d in resources_rows(mode.get("resources"), "run")]
    if best is not None:
        rows.insert(0, ("max runs/s (best concurrency)", best, UP))
    return rows


def output_rows(report):
    o = report.get("output")
    if not o:
        return []
    return [
        ("live MB/s", o["mb_per_s"], UP),
        ("first byte, ms", o["first_byte_ms"], DOWN),
        ("replay MB/s", o["replay_mb_per_s"], UP),
        ("checks failed", 0 if o["verified"] else 1, "count"),
    ] + resources_rows(o.get("resources"), "MB")


def idle_rows(report):
    i = report.get("idle")
    if not i:
        return []
    opened = i["opened"]
    errors = opened["failed"] + sum(i["closed_early"].values())
    if i.get("presence") is not None and not i["presence"]["exact"]:
        errors += 1
    return [
        ("handshakes/s", opened["handshakes_per_s"], UP),
        ("handshake p99 ms", lat(opened.get("handshake_ms"), "p99_ms"), DOWN),
        ("hub RSS per connection, KiB", i.get("hub_rss_per_connection_kib"), DOWN),
        ("errors", errors, "count"),
    ] + resources_rows(i.get("resources"), "handshake")


def fanout_rows(report):
    f = report.get("fanout")
    if not f:
        return []
    rows = []
    delivered = [r["delivered_per_s"] for r in f["rounds"] if r.get("delivered_per_s") is not None]
    if delivered:
        rows.append(("max delivered/s (best offered rate)", max(delivered), UP))
    for r in f["rounds"]:
        name = f"{r['offered_per_s'] / 1000:g}k/s offered"
        latency = r.get("latency_ms")
        rows += [
            (f"{name}: delivered/s", r["delivered_per_s"], UP),
            (f"{name}: p50 ms", lat(latency, "p50_ms"), DOWN),
            (f"{name}: p99 ms", lat(latency, "p99_ms"), DOWN),
            (f"{name}: max ms", lat(latency, "max_ms"), DOWN),
            (f"{name}: incomplete subscribers", r["subscribers"] - r["complete"], "count"),
        ]
        rows += [(f"{name}: {label}", value, d) for label, value, d in resources_rows(r.get("resources"), "delivery")]
    return rows


def job_rows(report):
    j = report.get("job")
    if not j:
        return []
    first = j.get("first_result_ms")
    return [
        ("job.accepted, ms", j["accepted_ms"], DOWN),
        ("first result, ms", first, DOWN),
        ("last result, s", j["last_result_ms"] / 1000, DOWN),
        ("setup (register, connect, online), s", j["setup_s"], DOWN),
        ("problems", len(j["problems"]), "count"),
    ] + resources_rows(j.get("resources"), "target")


def storm_rows(report):
    s = report.get("storm")
    if not s:
        return []
    rec = s["reconnected"]
    return [
        ("all back online (hub's view), s", s["hub_view"].get("recovered_s"), DOWN),
        ("reconnect handshakes/s", rec["handshakes_per_s"], UP),
        ("all reconnected (generator), s", rec["elapsed_s"], DOWN),
        ("presence not exact", 0 if s["presence"]["exact"] else 1, "count"),
        ("errors", rec["failed"] + s["hub_view"]["not_back"] + sum(s["closed_early"].values()), "count"),
    ] + resources_rows(s.get("resources"), "reconnect")


def echo_rows(report):
    e = report.get("echo")
    if not e:
        return []

    def keys(what, k):
        return [
            (f"{what}: p50 ms", lat(k.get("latency_ms"), "p50_ms"), DOWN),
            (f"{what}: p99 ms", lat(k.get("latency_ms"), "p99_ms"), DOWN),
            (f"{what}: keys not echoed", k["keys"] - k["echoed"], "count"),
        ]

    rows = keys("quiet", e["quiet"]) + resources_rows(e["quiet"].get("resources"), "key")
    if e.get("flooded"):
        k, flood = e["flooded"]
        size = f"{flood['requested_bytes'] / 1e6:,.0f} MB"
        rows += keys(f"during a {size} flood", k)
        rows += [
            (f"{size} flood: MB/s", flood["mb_per_s"], UP),
            (f"{size} flood: checks failed", 0 if flood["verified"] else 1, "count"),
        ]
    return rows


def rows_of(scenario, report):
    if scenario == "roundtrip":
        return roundtrip_rows(report)
    if scenario == "output":
        return output_rows(report)
    if scenario.startswith("idle"):
        return idle_rows(report)
    if scenario == "fanout":
        return fanout_rows(report)
    if scenario.startswith("job"):
        return job_rows(report)
    if scenario == "storm":
        return storm_rows(report)
    if scenario == "echo":
        return echo_rows(report)
    return []


TITLES = {
    "roundtrip": "Round trip (run.create → terminal run.status, one sim agent)",
    "output": "Output (one run, 10 KiB chunks, checked byte for byte, live and replayed)",
    "idle-clients": "Idle client connections (S1)",
    "idle-agents": "Idle agent connections (S1)",
    "fanout": "Fan-out of one run's output to many subscribers (S4)",
    "storm": "Reconnect storm (S6)",
    "echo": "Keystroke echo through a pty session (Muster only: the Node baseline has no sessions)",
}


def title(scenario):
    if scenario.startswith("job-"):
        return f"Job over {int(scenario[4:]):,} sim agents (one step each)"
    return TITLES.get(scenario, scenario)


def fmt(value):
    if value is None:
        return "–"
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    median = statistics.median(values)
    if len(values) == 1:
        return fmt(median)
    return f"{fmt(median)} [{fmt(min(values))}–{fmt(max(values))}]"


def ratio(direction, muster, node):
    muster = [v for v in muster if v is not None]
    node = [v for v in node if v is not None]
    if direction not in (UP, DOWN) or not muster or not node:
        return "–"
    m, n = statistics.median(muster), statistics.median(node)
    if m <= 0 or n <= 0:
        return "–"
    r = m / n if direction == UP else n / m
    return f"**{r:.2f}×**" if r >= 1 else f"{r:.2f}×"


def load(results):
    """(scenario, hub) -> list of reports; notes on failed runs; order of scenarios."""
    runs = defaultdict(list)
    notes, order = [], []
    for exit_file in sorted(results.glob("r*-*.exit"), key=lambda p: p.name):
        match = FILE_RE.match(exit_file.name)
        if not match:
            continue
        rnd, scenario, hub = int(match[1]), match[2], match[3]
        if scenario not in order:
            order.append(scenario)
        stem = exit_file.with_suffix("")
        code = exit_file.read_text().strip()
        report = None
        try:
            report = json.loads(stem.with_suffix(".json").read_text())
        except (OSError, ValueError):
            pass
        if report is not None:
            runs[(scenario, hub)].append((rnd, report))
        if code not in ("0", "2") or report is None:
            err = stem.with_suffix(".err")
            last = err.read_text().strip().splitlines()[-1:] if err.exists() else []
            why = "killed at its time limit" if code in ("124", "137") else f"exit {code}"
            notes.append(f"round {rnd}, {scenario}, {HUB_NAMES[hub]}: no figures ({why}): {' '.join(last)[:300]}")
        elif code == "2":
            notes.append(f"round {rnd}, {scenario}, {HUB_NAMES[hub]}: ran, but some checks failed (see the error rows)")
    for skipped in sorted(results.glob("r*-*.skipped")):
        notes.append(f"{skipped.stem}: skipped, the time budget ran out")
    for err in sorted(results.glob("r*-*.err")):
        if not err.with_suffix(".exit").exists() and not err.with_suffix(".skipped").exists():
            notes.append(f"{err.stem}: {err.read_text().strip()[:300]}")
    return runs, notes, order


def table(scenario, runs):
    per_hub = {}
    labels, directions = [], {}
    for hub in HUBS:
        values = defaultdict(list)
        for _, report in runs.get((scenario, hub), []):
            for label, value, direction in rows_of(scenario, report):
                if label not in directions:
                    labels.append(label)
                    directions[label] = direction
                values[label].append(value)
        per_hub[hub] = values
    lines = [
        "| metric | Muster | Node | Muster vs Node |",
        "|---|---|---|---|",
    ]
    for label in labels:
        direction = directions[label]
        m, n = per_hub["muster"].get(label, []), per_hub["node"].get(label, [])
        if direction == "count":
            m_cell = str(sum(v or 0 for v in m)) if m else "–"
            n_cell = str(sum(v or 0 for v in n)) if n else "–"
            lines.append(f"| {label} (sum over rounds) | {m_cell} | {n_cell} | – |")
        else:
            lines.append(f"| {label} | {cell(m)} | {cell(n)} | {ratio(direction, m, n)} |")
    return lines, per_hub, directions


def summary_lines(tables):
    """A few headline figures picked from the scenario tables."""
    picks = [
        ("roundtrip", "max runs/s (best concurrency)"),
        ("roundtrip", "rate 1000/s: p99 ms"),
        ("output", "live MB/s"),
        ("output", "hub CPU, µs per MB"),
        ("idle-clients", "handshakes/s"),
        ("idle-clients", "hub RSS per connection, KiB"),
        ("idle-agents", "handshakes/s"),
        ("idle-agents", "hub RSS per connection, KiB"),
    ]
    fanout = tables.get("fanout")
    if fanout:
        rates = sorted({float(label.split("k/s")[0]) for label in fanout[2] if "k/s offered" in label})
        if rates:
            near = min(rates, key=lambda r: abs(r - 100))
            picks += [("fanout", "max delivered/s (best offered rate)"), ("fanout", f"{near:g}k/s offered: p99 ms")]
    for scenario in sorted((s for s in tables if s.startswith("job-")), key=lambda s: int(s[4:])):
        picks.append((scenario, "last result, s"))
    picks.append(("storm", "all back online (hub's view), s"))
    picks += [("echo", "quiet: p50 ms"), ("echo", "quiet: p99 ms")]
    if "echo" in tables:
        picks += [(("echo", label)) for label in tables["echo"][2] if label.startswith("during a") and "p99" in label]
    lines = ["| scenario | figure | Muster | Node | Muster vs Node |", "|---|---|---|---|---|"]
    for scenario, label in picks:
        if scenario not in tables:
            continue
        _, per_hub, directions = tables[scenario]
        if label not in directions:
            continue
        m, n = per_hub["muster"].get(label, []), per_hub["node"].get(label, [])
        lines.append(
            f"| {title(scenario).split(' (')[0]} | {label} | {cell(m)} | {cell(n)} | {ratio(directions[label], m, n)} |"
        )
    totals = {
        hub: sum(
            v or 0
            for _, per_hub, directions in tables.values()
            for label, values in per_hub[hub].items()
            if directions[label] == "count"
            for v in values
        )
        for hub in HUBS
    }
    lines.append(
        f"| all | errors, stuck runs, failed checks (sum) | {totals['muster']} | {totals['node']} | – |"
    )
    return lines


def header(meta):
    quick = meta.get("quick")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench.sh` (with `scripts/bench_report.py`); do not edit by hand.",
        "",
    ]
    if quick:
        lines += [
            "> **Smoke run (`BENCH_QUICK=1`)**: small counts and one round, to check the script",
            "> end to end. These are not measurements; run `scripts/bench.sh` for those.",
            "",
        ]
    lines += [
        "## How these figures were produced",
        "",
        f"- Machine: {meta.get('nproc')} cores, {meta.get('mem_gib')} GiB memory, Linux {meta.get('kernel')}, "
        f"{meta.get('open_files'):,} open files per process; loopback only. Date: {meta.get('date')}; "
        f"commit {meta.get('commit') or 'unknown'}; Node {meta.get('node')}.",
    ]
    if meta.get("cpu_ref_mb_s"):
        lines.append(
            f"- Speed of one core before the rounds: SHA-256 at {meta['cpu_ref_mb_s']:,} MB/s (best of 3 over "
            "64 MiB). This machine's speed varies from day to day, and the two hubs do not slow down alike: "
            "compare two runs' figures, ratios included, only alongside this one."
        )
    lines += [
        f"- {meta.get('rounds')} round(s). In each round every scenario runs once against a fresh **Muster** hub "
        "(`muster dev`, release build, a fresh SQLite data directory, which also runs its `local` agent) and once "
        "against a fresh **Node** baseline hub (`../shared/baselines/muster-node-hub/hub.js`), alternating which "
        "goes first; each hub is stopped after its scenario.",
        "- The same load generator, `muster-bench` (release), drives both, on the same machine: it shares the two "
        "cores with the hub. Its own CPU is reported next to every figure (as % of one core), so a figure where "
        "the generator is busy is visibly bounded by it, not necessarily by the hub.",
        "- **The two hubs do not do the same work.** The Node hub keeps everything in memory and persists nothing. "
        "Muster writes every run, output chunk and job event to SQLite before it acknowledges or publishes it. "
        "Every comparison below sets a durable hub against one that is not.",
        "- Cells are the median over the rounds, with [min–max] when there was more than one round. "
        "**Muster vs Node** is a ratio oriented so that **above 1 means Muster is better**: Muster/Node for rates "
        "(per second), Node/Muster for times, latencies, CPU per operation and memory. Counts of errors are summed "
        "over the rounds.",
        "- Hub CPU is utime + stime of the hub process from `/proc/<pid>/stat` over the measured interval, divided "
        "by the operations in it; hub RSS is `VmRSS` from `/proc/<pid>/status`; the generator's CPU is its own "
        "`getrusage`.",
        "",
    ]
    return lines


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results, output = Path(sys.argv[1]), Path(sys.argv[2])
    meta = json.loads((results / "meta.json").read_text())
    runs, notes, found = load(results)
    planned = [line.partition("|")[0] for line in read_lines(results / "scenarios.txt")]
    order = [s for s in planned if s in found] + [s for s in found if s not in planned]
    tables = {scenario: table(scenario, runs) for scenario in order}
    lines = header(meta)
    lines += ["## Summary", ""] + summary_lines(tables) + [""]
    for scenario in order:
        lines += [f"## {title(scenario)}", ""]
        args = scenario_args(results, scenario)
        if args:
            lines += [f"`muster-bench {args}`", ""]
        lines += tables[scenario][0] + [""]
    if notes:
        lines += ["## Runs without figures or with failed checks", ""] + [f"- {note}" for note in notes] + [""]
    shown = os.path.relpath(results.resolve(), output.resolve().parent.parent)
    lines += [f"Raw results: `{shown}` (one `--json` output per run, with hub logs).", ""]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))


def read_lines(path):
    return path.read_text().splitlines() if path.exists() else []


def scenario_args(results, scenario):
    """The command line a scenario ran with, as bench.sh recorded it."""
    for line in read_lines(results / "scenarios.txt"):
        name, _, args = line.partition("|")
        if name == scenario:
            return args
    return None


if __name__ == "__main__":
    main()
