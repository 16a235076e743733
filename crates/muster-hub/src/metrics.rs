//! Rolling metric samples up into averages, as plain functions over samples.
//!
//! The store keeps raw samples for a while, then replaces them with one
//! average per window and agent, then deletes the averages too; the window
//! arithmetic and the averaging live here so they can be tested without a
//! database.

use std::collections::BTreeMap;

use muster_proto::UnixMillis;
use muster_proto::messages::{DiskUsage, MetricsSample};

/// The start of the window of length `window_ms` that holds `ts_ms`.
pub fn window_start(ts_ms: UnixMillis, window_ms: u64) -> UnixMillis {
    ts_ms - ts_ms % window_ms.max(1)
}

/// The field-by-field mean of `samples`, stamped with `ts_ms`.
pub fn average(samples: &[MetricsSample], ts_ms: UnixMillis) -> MetricsSample {
    let n = samples.len().max(1) as f64;
    let mean_u64 = |f: fn(&MetricsSample) -> u64| {
        (samples.iter().map(|s| f(s) as f64).sum::<f64>() / n) as u64
    };
    let mean_f64 = |f: fn(&MetricsSample) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let cores = samples
        .iter()
        .map(|s| s.cpu_per_core.len())
        .max()
        .unwrap_or(0);
    let cpu_per_core = (0..cores)
        .map(|i| {
            (samples
                .iter()
                .map(|s| s.cpu_per_core.get(i).copied().unwrap_or(0.0) as f64)
                .sum::<f64>()
                / n) as f32
        })
        .collect();
    MetricsSample {
        ts_ms,
        cpu_percent: mean_f64(|s| s.cpu_percent as f64) as f32,
        cpu_per_core,
        mem_used_bytes: mean_u64(|s| s.mem_used_bytes),
        mem_total_bytes: mean_u64(|s| s.mem_total_bytes),
        swap_used_bytes: mean_u64(|s| s.swap_used_bytes),
        swap_total_bytes: mean_u64(|s| s.swap_total_bytes),
        disks: average_disks(samples),
        load: [
            mean_f64(|s| s.load[0]),
            mean_f64(|s| s.load[1]),
            mean_f64(|s| s.load[2]),
        ],
        net_rx_bytes_per_sec: mean_u64(|s| s.net_rx_bytes_per_sec),
        net_tx_bytes_per_sec: mean_u64(|s| s.net_tx_bytes_per_sec),
        processes: mean_u64(|s| u64::from(s.processes)) as u32,
        uptime_secs: samples.iter().map(|s| s.uptime_secs).max().unwrap_or(0),
    }
}

fn average_disks(samples: &[MetricsSample]) -> Vec<DiskUsage> {
    let mut sums: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for disk in samples.iter().flat_map(|s| &s.disks) {
        let entry = sums.entry(&disk.mount).or_default();
        entry.0 += disk.used_bytes;
        entry.1 += disk.total_bytes;
        entry.2 += 1;
    }
    sums.into_iter()
        .map(|(mount, (used, total, n))| DiskUsage {
            mount: mount.to_owned(),
            used_bytes: used / n,
            total_bytes: total / n,
        })
        .collect()
}

/// Checks that a sample from an agent is sane before it is stored.
pub fn validate(sample: &MetricsSample) -> Result<(), &'static str> {
    let floats_ok = sample.cpu_percent.is_finite()
        && sample.cpu_per_core.iter().all(|c| c.is_finite())
        && sample.load.iter().all(|l| l.is_finite());
    if !floats_ok {
        return Err("metrics sample has a non-finite number");
    }
    if sample.cpu_per_core.len() > MAX_CORES || sample.disks.len() > MAX_DISKS {
        return Err("metrics sample lists too many cores or disks");
    }
    if sample.disks.iter().any(|d| d.mount.len() > MAX_MOUNT_LEN) {
        return Err("metrics sample has an overlong mount point");
    }
    Ok(())
}

/// Most cores a sample may list.
const MAX_CORES: usize = 4096;
/// Most filesystems a sample may list.
const MAX_DISKS: usize = 256;
/// Longest mount point.
const MAX_MOUNT_LEN: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_ms: u64, cpu: f32, mem: u64, disk_used: u64) -> MetricsSample {
        MetricsSample {
            ts_ms,
            cpu_percent: cpu,
            cpu_per_core: vec![cpu, cpu * 2.0],
            mem_used_bytes: mem,
            mem_total_bytes: 1000,
            disks: vec![DiskUsage {
                mount: "/".into(),
                used_bytes: disk_used,
                total_bytes: 500,
            }],
            load: [1.0, 2.0, 3.0],
            uptime_secs: ts_ms / 1000,
            ..MetricsSample::default()
        }
    }

    #[test]
    fn averages_each_field() {
        let avg = average(
            &[sample(1_000, 10.0, 100, 50), sample(2_000, 30.0, 300, 150)],
            0,
        );
        assert_eq!(avg.cpu_percent, 20.0);
        assert_eq!(avg.cpu_per_core, vec![20.0, 40.0]);
        assert_eq!(avg.mem_used_bytes, 200);
        assert_eq!(
            avg.disks,
            vec![DiskUsage {
                mount: "/".into(),
                used_bytes: 100,
                total_bytes: 500
            }]
        );
        assert_eq!(avg.load, [1.0, 2.0, 3.0]);
        assert_eq!(avg.uptime_secs, 2);
    }

    #[test]
    fn windows_align_to_their_length() {
        assert_eq!(window_start(299_999, 300_000), 0);
        assert_eq!(window_start(300_000, 300_000), 300_000);
    }

    #[test]
    fn rejects_nonsense() {
        let mut bad = sample(0, f32::NAN, 0, 0);
        assert!(validate(&bad).is_err());
        bad.cpu_percent = 1.0;
        bad.cpu_per_core = vec![f32::INFINITY];
        assert!(validate(&bad).is_err());
    }
}
