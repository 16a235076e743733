//! CPU and memory next to every figure: the hub's (from `/proc/<pid>`, when
//! `--hub-pid` names it) and this generator's own (`getrusage`).
//!
//! A [`Meter`] is started before a measured interval and finished after it
//! with the number of operations done; the [`Resources`] it returns say how
//! much CPU the hub spent per operation, how its resident memory moved, and
//! how busy the generator was, so a reader can tell a figure bounded by the
//! hub from one bounded by the generator. Reading the hub is best effort: a
//! hub that is gone, or a pid that is not readable, leaves those fields empty.

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::{SysconfVar, sysconf};
use serde::Serialize;
use tokio::time::Instant;

/// Clock ticks per second when `sysconf(_SC_CLK_TCK)` cannot say: the value
/// Linux has used on every architecture for `/proc` times.
const FALLBACK_CLOCK_TICKS: u64 = 100;

/// Fields of `/proc/<pid>/stat` after the command name: the first one is the
/// state (field 3 of the man page), so utime (field 14) is index 11 and stime
/// (field 15) index 12.
const STAT_UTIME_INDEX: usize = 11;
const STAT_STIME_INDEX: usize = 12;

/// What one operation is, for the "hub CPU per …" figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpUnit {
    /// One run, from `run.create` to its terminal status.
    Run,
    /// 10^6 bytes of output.
    Mb,
    /// One WebSocket handshake, up to `connection.ack`.
    Handshake,
    /// One output frame delivered to one subscriber.
    Delivery,
    /// One target of a job.
    Target,
    /// One keystroke echoed through a session.
    Key,
}

impl OpUnit {
    /// The unit's name in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Mb => "MB",
            Self::Handshake => "handshake",
            Self::Delivery => "delivery",
            Self::Target => "target",
            Self::Key => "key",
        }
    }
}

/// CPU and memory over one measured interval.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Resources {
    /// Length of the interval.
    pub(crate) wall_s: f64,
    /// Operations done in it.
    pub(crate) ops: f64,
    /// What one operation is.
    pub(crate) op_unit: OpUnit,
    /// The hub's pid, when given.
    pub(crate) hub_pid: Option<u32>,
    /// CPU time the hub used (user + system), in seconds.
    pub(crate) hub_cpu_s: Option<f64>,
    /// `hub_cpu_s` as a percentage of one core over the interval.
    pub(crate) hub_cpu_pct: Option<f64>,
    /// Hub CPU per operation, in microseconds.
    pub(crate) hub_cpu_us_per_op: Option<f64>,
    /// The hub's resident memory at the start, in KiB.
    pub(crate) hub_rss_before_kib: Option<u64>,
    /// The hub's resident memory at the end, in KiB.
    pub(crate) hub_rss_after_kib: Option<u64>,
    /// CPU time this generator used (user + system, all threads), in seconds.
    pub(crate) gen_cpu_s: f64,
    /// `gen_cpu_s` as a percentage of one core; 200 is both cores of this machine.
    pub(crate) gen_cpu_pct: f64,
}

impl Resources {
    /// "hub 12.3 µs/run (85% cpu), rss 40→52 MiB; generator 45% cpu", for tables.
    pub(crate) fn summary(&self) -> String {
        let hub = match (self.hub_cpu_us_per_op, self.hub_cpu_pct) {
            (Some(per_op), Some(pct)) => format!(
                "hub {per_op:.1} µs/{} ({pct:.0}% cpu)",
                self.op_unit.label()
            ),
            _ => "hub cpu -".to_owned(),
        };
        let rss = match (self.hub_rss_before_kib, self.hub_rss_after_kib) {
            (Some(before), Some(after)) => format!(
                ", rss {:.1}→{:.1} MiB",
                before as f64 / 1024.0,
                after as f64 / 1024.0
            ),
            _ => String::new(),
        };
        format!("{hub}{rss}; generator {:.0}% cpu", self.gen_cpu_pct)
    }
}

/// A measurement in progress.
#[derive(Debug)]
pub(crate) struct Meter {
    hub_pid: Option<u32>,
    started: Instant,
    hub_ticks: Option<u64>,
    hub_rss_kib: Option<u64>,
    gen_cpu: Duration,
}

impl Meter {
    /// Starts measuring now; `hub_pid` is the hub process, if known.
    pub(crate) fn start(hub_pid: Option<u32>) -> Self {
        Self {
            hub_pid,
            hub_ticks: hub_pid.and_then(cpu_ticks),
            hub_rss_kib: hub_pid.and_then(rss_kib),
            gen_cpu: own_cpu(),
            started: Instant::now(),
        }
    }

    /// The hub's resident memory now, in KiB.
    pub(crate) fn hub_rss_now(&self) -> Option<u64> {
        self.hub_pid.and_then(rss_kib)
    }

    /// Ends the interval: `ops` operations of `unit` were done in it.
    pub(crate) fn finish(&self, ops: f64, unit: OpUnit) -> Resources {
        let wall = self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        let gen_cpu = own_cpu().saturating_sub(self.gen_cpu).as_secs_f64();
        let hub_cpu = match (self.hub_ticks, self.hub_pid.and_then(cpu_ticks)) {
            (Some(before), Some(after)) => {
                Some(after.saturating_sub(before) as f64 / clock_ticks() as f64)
            }
            _ => None,
        };
        Resources {
            wall_s: wall,
            ops,
            op_unit: unit,
            hub_pid: self.hub_pid,
            hub_cpu_s: hub_cpu,
            hub_cpu_pct: hub_cpu.map(|cpu| cpu / wall * 100.0),
            hub_cpu_us_per_op: hub_cpu.filter(|_| ops > 0.0).map(|cpu| cpu * 1e6 / ops),
            hub_rss_before_kib: self.hub_rss_kib,
            hub_rss_after_kib: self.hub_rss_now(),
            gen_cpu_s: gen_cpu,
            gen_cpu_pct: gen_cpu / wall * 100.0,
        }
    }
}

/// Whether `/proc/<pid>/stat` can be read: the check behind `--hub-pid`.
pub(crate) fn readable(pid: u32) -> bool {
    cpu_ticks(pid).is_some()
}

/// User plus system time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// utime + stime from the text of a `/proc/<pid>/stat` file. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses itself, so
/// the fields are counted from its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(STAT_UTIME_INDEX)?.parse().ok()?;
    let stime: u64 = fields.get(STAT_STIME_INDEX)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_rss(&status)
}

/// The `VmRSS:` line of a `/proc/<pid>/status` file, in KiB.
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Clock ticks per second of `/proc` times.
fn clock_ticks() -> u64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        _ => FALLBACK_CLOCK_TICKS,
    }
}

/// CPU time of this process so far, every thread, user plus system.
fn own_cpu() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let time = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            time(usage.user_time()) + time(usage.system_time())
        }
        Err(e) => {
            tracing::warn!("getrusage failed: {e}");
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (muster (dev) x) S 1 4242 4242 0 -1 4194560 1083 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 123456789 2345 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tmuster\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss(status), Some(51_234));
        assert_eq!(parse_status_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_status_rss("VmRSS:\t 12 MB\n"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id();
        assert!(readable(pid));
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(clock_ticks() > 0);
        let meter = Meter::start(Some(pid));
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let resources = meter.finish(4.0, OpUnit::Run);
        assert!(resources.hub_cpu_s.is_some());
        assert!(resources.hub_rss_after_kib.is_some());
        assert!(resources.gen_cpu_s >= 0.0);
        assert!(
            resources.summary().contains("µs/run"),
            "{}",
            resources.summary()
        );
    }

    #[test]
    fn no_pid_no_hub_figures() {
        let resources = Meter::start(None).finish(1.0, OpUnit::Mb);
        assert_eq!(resources.hub_cpu_s, None);
        assert_eq!(resources.hub_cpu_us_per_op, None);
        assert!(resources.summary().starts_with("hub cpu -"));
    }
}
