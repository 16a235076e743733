//! Host metrics in human units, for the `agents metrics` and `top` tables:
//! byte sizes (`1.2G`), used/total pairs (`1.2G/15.6G`), percentages, load
//! averages and the resolution of a stored point (`raw`, `5m`).
//!
//! Sizes are binary (1K = 1024 bytes) with one-letter suffixes, as `top` and
//! `free -h` print them; a missing value is `-`, like everywhere in the CLI.

use muster_proto::messages::{DiskUsage, MetricsSample};

/// Suffixes of successive powers of 1024.
const BYTE_UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];

/// Below this, a scaled size keeps one decimal (`15.6G`); above, none (`512M`).
const DECIMAL_BELOW: f64 = 99.95;

/// A byte count in the largest unit that keeps it at least 1: `512B`, `1.5K`,
/// `15.6G`, `512M`.
pub(crate) fn bytes(count: u64) -> String {
    let mut value = count as f64;
    let mut unit = 0;
    // 1023.5 and up would print as `1024`: move to the next unit instead.
    while value >= 1023.5 && unit + 1 < BYTE_UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let suffix = BYTE_UNITS[unit];
    match unit {
        0 => format!("{count}{suffix}"),
        _ if value < DECIMAL_BELOW => format!("{value:.1}{suffix}"),
        _ => format!("{value:.0}{suffix}"),
    }
}

/// `used/total` in byte units: `1.2G/15.6G`.
pub(crate) fn used_of(used: u64, total: u64) -> String {
    format!("{}/{}", bytes(used), bytes(total))
}

/// A percentage with one decimal: `12.5`.
pub(crate) fn percent(value: f32) -> String {
    format!("{value:.1}")
}

/// Memory in use out of the total.
pub(crate) fn memory(sample: &MetricsSample) -> String {
    used_of(sample.mem_used_bytes, sample.mem_total_bytes)
}

/// Swap in use out of the total, or `-` on a host without swap.
pub(crate) fn swap(sample: &MetricsSample) -> String {
    match sample.swap_total_bytes {
        0 => "-".to_owned(),
        total => used_of(sample.swap_used_bytes, total),
    }
}

/// The filesystem worth one cell: the one mounted at `/`, else the largest.
pub(crate) fn main_disk(disks: &[DiskUsage]) -> Option<&DiskUsage> {
    disks
        .iter()
        .find(|disk| disk.mount == "/")
        .or_else(|| disks.iter().max_by_key(|disk| disk.total_bytes))
}

/// Use of the [`main_disk`], or `-` when the sample lists none.
pub(crate) fn disk(sample: &MetricsSample) -> String {
    main_disk(&sample.disks).map_or_else(
        || "-".to_owned(),
        |disk| used_of(disk.used_bytes, disk.total_bytes),
    )
}

/// The 1-minute load average with two decimals: `0.42`.
pub(crate) fn load(sample: &MetricsSample) -> String {
    format!("{:.2}", sample.load[0])
}

/// Bytes received and sent per second: `1.2M/340K`.
pub(crate) fn network(sample: &MetricsSample) -> String {
    used_of(sample.net_rx_bytes_per_sec, sample.net_tx_bytes_per_sec)
}

/// What a stored point stands for: `raw` for a sample as taken, else the
/// length of the window it averages in its largest exact unit (`5m`, `1h`).
pub(crate) fn resolution(millis: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    if millis == 0 {
        return "raw".to_owned();
    }
    UNITS
        .iter()
        .find(|(size, _)| millis.is_multiple_of(*size))
        .map_or_else(
            || format!("{millis}ms"),
            |(size, unit)| format!("{}{unit}", millis / size),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1.0K");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(512 * 1024 * 1024), "512M");
        assert_eq!(bytes(GIB * 12 / 10), "1.2G");
        assert_eq!(bytes(GIB * 156 / 10), "15.6G");
        assert_eq!(bytes(100 * GIB), "100G");
        assert_eq!(bytes(3 * 1024 * GIB), "3.0T");
        assert_eq!(bytes(u64::MAX), "16.0E");
    }

    #[test]
    fn sizes_never_print_as_1024_of_a_unit() {
        assert_eq!(bytes(1024 * 1024 - 1), "1.0M");
        assert_eq!(bytes(1023 * 1024 + 600), "1.0M");
        assert_eq!(bytes(1023 * 1024), "1023K");
    }

    #[test]
    fn pairs_and_numbers() {
        assert_eq!(used_of(GIB * 12 / 10, GIB * 156 / 10), "1.2G/15.6G");
        assert_eq!(percent(12.345), "12.3");
        assert_eq!(percent(100.0), "100.0");
        let sample = MetricsSample {
            load: [0.4242, 1.0, 2.0],
            net_rx_bytes_per_sec: 1_258_291,
            net_tx_bytes_per_sec: 348_160,
            ..MetricsSample::default()
        };
        assert_eq!(load(&sample), "0.42");
        assert_eq!(network(&sample), "1.2M/340K");
        assert_eq!(swap(&sample), "-");
    }

    #[test]
    fn the_root_disk_wins_then_the_largest() {
        let disk = |mount: &str, total_bytes| DiskUsage {
            mount: mount.to_owned(),
            used_bytes: total_bytes / 2,
            total_bytes,
        };
        let disks = vec![disk("/data", 8 * GIB), disk("/", 2 * GIB)];
        assert_eq!(main_disk(&disks).unwrap().mount, "/");
        let disks = vec![disk("/boot", GIB), disk("/data", 8 * GIB)];
        assert_eq!(main_disk(&disks).unwrap().mount, "/data");
        let sample = MetricsSample {
            disks,
            ..MetricsSample::default()
        };
        assert_eq!(super::disk(&sample), "4.0G/8.0G");
        assert_eq!(super::disk(&MetricsSample::default()), "-");
    }

    #[test]
    fn resolutions_name_their_window() {
        assert_eq!(resolution(0), "raw");
        assert_eq!(resolution(300_000), "5m");
        assert_eq!(resolution(3_600_000), "1h");
        assert_eq!(resolution(90_000), "90s");
        assert_eq!(resolution(86_400_000), "1d");
        assert_eq!(resolution(1_500), "1500ms");
    }
}
