//! Host metrics: what the agent measures of its machine, and when it sends it.
//!
//! A [`Sampler`] owns the `sysinfo` handles (CPUs, memory and processes;
//! mounted filesystems; network interfaces) and refreshes them on every
//! [`Sampler::sample`], which reads `/proc` and `/sys` and so blocks. The
//! agent keeps one sampler for its whole life, because CPU use and network
//! rates are differences between two refreshes: the first sample of an agent
//! process reads CPU use as 0 (or whatever `sysinfo` makes of a single
//! reading) and network rates as 0; every later one covers the time since the
//! previous sample.
//!
//! While a connection is up, a [`Feed`] samples on its own task, on the
//! blocking pool, once at once and then every interval, so the connection's
//! `select!` never waits on `/proc`. Metrics are best effort and never
//! spooled: a feed exists only while connected, a sample is dropped if the
//! connection ends before it is sent, and a slow connection sees only the
//! latest sample (a `watch` channel). Only the latest reading matters to the
//! hub, and the spool's bound is for run output, which must not be lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use muster_proto::UnixMillis;
use muster_proto::messages::{DiskUsage, MetricsSample};
use sysinfo::{DiskRefreshKind, Disks, Networks, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::task::AbortOnDropHandle;

/// Interfaces left out of the network rates: loopback traffic never leaves the
/// host, and would count a local hub's own traffic twice.
const LOOPBACK_INTERFACES: &[&str] = &["lo", "lo0"];

/// Host sampling for every connection of one agent.
pub(crate) struct Metrics {
    /// A std `Mutex`: only the blocking sampling call locks it, never across
    /// an `.await`, and a feed samples one tick at a time.
    sampler: Arc<Mutex<Sampler>>,
    interval: Duration,
}

impl Metrics {
    /// Sampling every `interval`, with a sampler made on the blocking pool.
    /// `None` (after a warning) if this platform cannot be sampled: metrics
    /// are optional, the agent works without them.
    pub(crate) async fn start(interval: Duration) -> Option<Self> {
        let made = tokio::task::spawn_blocking(Sampler::new)
            .await
            .context("creating the metrics sampler panicked")
            .and_then(|made| made);
        match made {
            Ok(sampler) => Some(Self {
                sampler: Arc::new(Mutex::new(sampler)),
                interval,
            }),
            Err(error) => {
                tracing::warn!("host metrics are off: {error:#}");
                None
            }
        }
    }

    /// Starts sampling for one connection: a first sample at once, then one
    /// every interval, until the feed is dropped.
    pub(crate) fn feed(&self) -> Feed {
        let (samples_tx, samples_rx) = watch::channel(None);
        let task = tokio::spawn(sample_every(
            self.sampler.clone(),
            self.interval,
            samples_tx,
        ));
        Feed {
            samples_rx,
            _task: AbortOnDropHandle::new(task),
        }
    }
}

/// The samples for one connection; dropping it stops the sampling.
pub(crate) struct Feed {
    /// Holds only the latest sample: one the connection had no time to send
    /// is replaced, not queued.
    samples_rx: watch::Receiver<Option<MetricsSample>>,
    _task: AbortOnDropHandle<()>,
}

impl Feed {
    /// The next sample; never, if `feed` is `None` (sampling is off).
    pub(crate) async fn next(feed: Option<&mut Feed>) -> MetricsSample {
        let Some(feed) = feed else {
            return std::future::pending().await;
        };
        loop {
            if feed.samples_rx.changed().await.is_err() {
                // The task ended, which it does not do before the feed is dropped.
                return std::future::pending().await;
            }
            if let Some(sample) = feed.samples_rx.borrow_and_update().clone() {
                return sample;
            }
        }
    }
}

/// Samples on the blocking pool every `interval` and publishes each sample.
async fn sample_every(
    sampler: Arc<Mutex<Sampler>>,
    interval: Duration,
    samples_tx: watch::Sender<Option<MetricsSample>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sampler = sampler.clone();
        let sampling = tokio::task::spawn_blocking(move || {
            sampler
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sample()
        });
        match sampling.await {
            Ok(sample) => {
                if samples_tx.send(Some(sample)).is_err() {
                    return;
                }
            }
            Err(error) => tracing::warn!("sampling host metrics failed: {error}"),
        }
    }
}

/// Reads the host's resources; see the module docs for what needs two reads.
pub(crate) struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
    /// When `networks` was last refreshed: its byte counts are since then.
    networks_refreshed: Option<Instant>,
}

impl Sampler {
    /// A sampler that has read nothing yet; cheap, but may touch `/proc`.
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            system: System::new().context("reading system information")?,
            disks: Disks::new().context("listing filesystems")?,
            networks: Networks::new().context("listing network interfaces")?,
            networks_refreshed: None,
        })
    }

    /// Refreshes everything and returns the host's state as of now. Blocks on
    /// `/proc` and `/sys` reads (and a `statvfs` per filesystem).
    pub(crate) fn sample(&mut self) -> MetricsSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let process_kind = ProcessRefreshKind::nothing().without_tasks();
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::All, true, process_kind);
        let (net_rx_bytes_per_sec, net_tx_bytes_per_sec) = self.network_rates();
        let load = System::load_average().unwrap_or_default();
        MetricsSample {
            ts_ms: now_ms(),
            cpu_percent: percent(self.system.global_cpu_usage()),
            cpu_per_core: self
                .system
                .cpus()
                .iter()
                .map(|cpu| percent(cpu.usage()))
                .collect(),
            mem_used_bytes: self.system.used_memory(),
            mem_total_bytes: self.system.total_memory(),
            swap_used_bytes: self.system.used_swap(),
            swap_total_bytes: self.system.total_swap(),
            disks: self.disk_usages(),
            load: [load.one, load.five, load.fifteen],
            net_rx_bytes_per_sec,
            net_tx_bytes_per_sec,
            processes: u32::try_from(self.system.processes().len()).unwrap_or(u32::MAX),
            uptime_secs: System::uptime().unwrap_or_default(),
        }
    }

    /// Bytes per second received and sent since the previous refresh; 0 on the
    /// first. Interfaces that appeared since then count from their first sight.
    fn network_rates(&mut self) -> (u64, u64) {
        self.networks.refresh(true);
        let now = Instant::now();
        let elapsed = self
            .networks_refreshed
            .replace(now)
            .map_or(Duration::ZERO, |then| now - then);
        let (rx, tx) = self
            .networks
            .iter()
            .filter(|(name, _)| !LOOPBACK_INTERFACES.iter().any(|lo| *name == lo))
            .fold((0u64, 0u64), |(rx, tx), (_, data)| {
                (
                    rx.saturating_add(data.received()),
                    tx.saturating_add(data.transmitted()),
                )
            });
        (per_second(rx, elapsed), per_second(tx, elapsed))
    }

    /// Every real filesystem once (see [`distinct_disks`]).
    fn disk_usages(&mut self) -> Vec<DiskUsage> {
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        distinct_disks(self.disks.iter().map(|disk| MountedDisk {
            mount: disk.mount_point().to_string_lossy().into_owned(),
            device: disk.id(),
            total_bytes: disk.total_space(),
            available_bytes: disk.available_space(),
        }))
    }
}

/// A filesystem as `sysinfo` lists it.
#[derive(Clone, Debug)]
struct MountedDisk {
    mount: String,
    /// Device id (`st_dev`) of the mount point, when known.
    device: Option<u64>,
    total_bytes: u64,
    /// Space an unprivileged user can still use.
    available_bytes: u64,
}

/// One entry per filesystem, sorted by mount point. `sysinfo` already leaves
/// out pseudo filesystems (`proc`, `sysfs`, `tmpfs`, …); this also drops
/// filesystems of size 0, repeated mount points, and repeated devices (bind
/// mounts, such as a container's `/etc/hosts`), keeping the shortest mount
/// point of each device. Space reserved for root counts as used.
fn distinct_disks(disks: impl IntoIterator<Item = MountedDisk>) -> Vec<DiskUsage> {
    let mut by_device: BTreeMap<u64, MountedDisk> = BTreeMap::new();
    let mut by_mount: BTreeMap<String, MountedDisk> = BTreeMap::new();
    for disk in disks.into_iter().filter(|disk| disk.total_bytes > 0) {
        match disk.device {
            Some(device) => {
                let kept = by_device.entry(device).or_insert_with(|| disk.clone());
                if disk.mount.len() < kept.mount.len() {
                    *kept = disk;
                }
            }
            None => {
                by_mount.entry(disk.mount.clone()).or_insert(disk);
            }
        }
    }
    for disk in by_device.into_values() {
        by_mount.entry(disk.mount.clone()).or_insert(disk);
    }
    let usage = |disk: MountedDisk| DiskUsage {
        used_bytes: disk.total_bytes.saturating_sub(disk.available_bytes),
        total_bytes: disk.total_bytes,
        mount: disk.mount,
    };
    by_mount.into_values().map(usage).collect()
}

/// `bytes` over `elapsed`, per second; 0 for no elapsed time.
fn per_second(bytes: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros();
    if micros == 0 {
        return 0;
    }
    let rate = u128::from(bytes) * 1_000_000 / micros;
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// A usage percentage, kept within 0-100 (and 0 for NaN).
fn percent(usage: f32) -> f32 {
    if usage.is_nan() {
        0.0
    } else {
        usage.clamp(0.0, 100.0)
    }
}

/// The wall clock, in Unix milliseconds.
pub(crate) fn now_ms() -> UnixMillis {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
