//! The tables printed for people, one per scenario; every one ends with the
//! hub's CPU per operation and memory, and the generator's own CPU.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{ModeKind, ModeReport, OutputReport};
use crate::fanout::FanoutReport;
use crate::idle::IdleReport;
use crate::job::JobReport;
use crate::stats::LatencySummary;
use crate::storm::StormReport;
use crate::swarm::Opened;

pub(super) fn roundtrip(modes: &[ModeReport]) -> String {
    let mut out = String::from("\nround trip (run.create -> terminal run.status)\n");
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>8} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "mode",
        "sent",
        "skipped",
        "ok",
        "errors",
        "stuck",
        "runs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for mode in modes {
        let label = match (mode.kind, mode.target_rate) {
            (ModeKind::Rate, Some(rate)) => format!("rate {rate}/s"),
            _ => format!("max c={}", mode.concurrency),
        };
        let _ = writeln!(
            out,
            "{label:<14} {:>8} {:>8} {:>8} {:>7} {:>6} {:>9.1} {}",
            mode.sent,
            mode.skipped,
            mode.completed,
            mode.errors,
            mode.stuck,
            mode.throughput_per_s,
            latency_cell(mode.latency_ms.as_ref()),
        );
        let _ = writeln!(out, "  {}", mode.resources.summary());
        kinds(&mut out, "error", &mode.error_kinds);
        kinds(&mut out, "STUCK", &mode.stuck_kinds);
        if !mode.stuck_runs.is_empty() {
            let _ = writeln!(out, "  stuck runs: {}", mode.stuck_runs.join(" "));
        }
    }
    out
}

/// The four latency columns (p50, p90, p99, max), or dashes.
fn latency_cell(latency: Option<&LatencySummary>) -> String {
    match latency {
        Some(l) => format!(
            "{:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        ),
        None => format!("{:>8} {:>8} {:>8} {:>8}", "-", "-", "-", "-"),
    }
}

fn kinds<V: std::fmt::Display>(out: &mut String, what: &str, kinds: &BTreeMap<String, V>) {
    for (kind, count) in kinds {
        let _ = writeln!(out, "  {what} x{count}: {kind}");
    }
}

pub(super) fn output(o: &OutputReport) -> String {
    let mut out = String::from("\noutput (agent -> hub -> client, one run)\n");
    let _ = writeln!(
        out,
        "  requested {} B in {} B slices (hub cap {} B)",
        o.requested_bytes, o.chunk_bytes, o.cap_bytes
    );
    let _ = writeln!(
        out,
        "  live      {} B in {} frames, {:.3} s from first frame to terminal status: {:.1} MB/s \
         (first byte after {:.1} ms)",
        o.received_bytes, o.frames, o.stream_s, o.mb_per_s, o.first_byte_ms
    );
    let truncated = match o.truncated {
        true => "truncated",
        false => "not truncated",
    };
    let _ = writeln!(out, "  stored    {} B, {truncated}", o.stored_bytes);
    let _ = writeln!(
        out,
        "  replay    {} B in {:.3} s: {:.1} MB/s",
        o.replay_bytes, o.replay_s, o.replay_mb_per_s
    );
    let _ = writeln!(out, "  {}", o.resources.summary());
    if o.verified {
        out.push_str("  verified  counts, seq, offsets and every byte match\n");
    }
    problems(&mut out, &o.problems);
    out
}

fn opened_line(what: &str, opened: &Opened) -> String {
    format!(
        "  {what:<11} {}/{} in {:.2} s: {:.0} handshakes/s, {} at once, handshake {}\n",
        opened.ok,
        opened.count,
        opened.elapsed_s,
        opened.handshakes_per_s,
        opened.concurrency,
        latency_brief(opened.handshake_ms.as_ref())
    )
}

fn latency_brief(latency: Option<&LatencySummary>) -> String {
    match latency {
        Some(l) => format!("p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms),
        None => "-".to_owned(),
    }
}

pub(super) fn idle(i: &IdleReport) -> String {
    let kind = format!("{:?}", i.kind).to_lowercase();
    let mut out = format!("\nidle {kind} connections\n");
    if let Some(registered) = i.registered_s {
        let _ = writeln!(out, "  registered  in {registered:.2} s");
    }
    out.push_str(&opened_line("opened", &i.opened));
    kinds(&mut out, "FAILED", &i.opened.failures);
    if let Some(presence) = &i.presence {
        let _ = writeln!(out, "  hub lists   {}", presence.describe(i.opened.count));
    }
    let rss = match (
        i.hub_rss_before_kib,
        i.hub_rss_open_kib,
        i.hub_rss_per_connection_kib,
    ) {
        (Some(before), Some(open), Some(per)) => format!(
            "{:.1} MiB before, {:.1} MiB open after {:.1} s: {per:.1} KiB per connection",
            before as f64 / 1024.0,
            open as f64 / 1024.0,
            i.settle_s
        ),
        _ => "- (no --hub-pid)".to_owned(),
    };
    let _ = writeln!(out, "  hub rss     {rss}");
    let _ = writeln!(out, "  opening: {}", i.resources.summary());
    kinds(&mut out, "CLOSED EARLY", &i.closed_early);
    out
}

pub(super) fn fanout(f: &FanoutReport) -> String {
    let subscribers = f.opened.count;
    let mut out = format!("\nfan-out (one run's output to {subscribers} subscribers)\n");
    out.push_str(&opened_line("subscribers", &f.opened));
    kinds(&mut out, "FAILED", &f.opened.failures);
    let _ = writeln!(
        out,
        "{:>7} {:>10} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "chunk/s",
        "offered/s",
        "received",
        "delivered/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "complete"
    );
    for r in &f.rounds {
        let _ = writeln!(
            out,
            "{:>7} {:>10.0} {:>10} {:>11.0} {} {:>9}",
            r.rate,
            r.offered_per_s,
            format!("{}/{}", r.received, r.expected),
            r.delivered_per_s,
            latency_cell(r.latency_ms.as_ref()),
            format!("{}/{}", r.complete, r.subscribers),
        );
        let _ = writeln!(out, "  {}", r.resources.summary());
        if r.gaps + r.duplicates + r.missing_tail > 0 {
            let _ = writeln!(
                out,
                "  ERRORS  {} gaps, {} duplicates, {} missing at the end",
                r.gaps, r.duplicates, r.missing_tail
            );
        }
        kinds(&mut out, "INCOMPLETE", &r.failures);
        if !r.run_acknowledged {
            out.push_str("  ERROR   the hub did not acknowledge the run's end\n");
        }
    }
    out
}

pub(super) fn storm(s: &StormReport) -> String {
    let mut out = format!("\nstorm ({} agents drop at once and reconnect)\n", s.agents);
    let _ = writeln!(out, "  registered  in {:.2} s", s.registered_s);
    out.push_str(&opened_line("connected", &s.opened));
    out.push_str(&opened_line("reconnected", &s.reconnected));
    kinds(&mut out, "FAILED", &s.reconnected.failures);
    let v = &s.hub_view;
    let recovered = v.recovered_s.map_or_else(
        || "NOT within the timeout".to_owned(),
        |s| format!("after {s:.2} s"),
    );
    let _ = writeln!(
        out,
        "  hub view    all back online {recovered} ({} status events, {} agents seen offline, \
         {} back, {} never back, {} last not online)",
        v.events, v.seen_offline, v.back, v.not_back, v.last_not_online
    );
    if let Some(closed) = &v.watcher_closed {
        let _ = writeln!(out, "  ERROR   the watching client ended early: {closed}");
    }
    let exact = match s.presence.exact {
        true => "exact",
        false => "NOT EXACT",
    };
    let _ = writeln!(
        out,
        "  hub lists   {} ({exact})",
        s.presence.describe(s.agents)
    );
    let _ = writeln!(out, "  recovery: {}", s.resources.summary());
    kinds(&mut out, "CLOSED EARLY", &s.closed_early);
    out
}

pub(super) fn job(j: &JobReport) -> String {
    let mut out = format!(
        "\njob (one step on every agent matching {}, at most {} at once; times from job.create)\n",
        j.selector, j.batch_limit
    );
    let _ = writeln!(
        out,
        "{:>8} {:>12} {:>16} {:>15} {:>9}",
        "agents", "accepted ms", "first result ms", "last result ms", "results"
    );
    let first = j
        .first_result_ms
        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"));
    let _ = writeln!(
        out,
        "{:>8} {:>12.2} {:>16} {:>15.2} {:>9}",
        j.agents,
        j.accepted_ms,
        first,
        j.last_result_ms,
        format!("{}/{}", j.results, j.agents),
    );
    let _ = writeln!(out, "  {}", j.resources.summary());
    let _ = writeln!(
        out,
        "  setup       {:.2} s: registered in {:.2} s, then",
        j.setup_s, j.registered_s
    );
    out.push_str(&opened_line("connected", &j.opened));
    if j.verified {
        let _ = writeln!(
            out,
            "  verified  job {} {}: {} targets, each one step exited 0, every run acknowledged",
            j.job, j.state, j.agents
        );
    }
    problems(&mut out, &j.problems);
    out
}

fn problems(out: &mut String, problems: &[String]) {
    for problem in problems {
        let _ = writeln!(out, "  PROBLEM   {problem}");
    }
}
