//! `muster agents metrics NAME`: an agent's stored resource samples as a
//! table, oldest first, or as the `metrics.series` points in JSON.
//!
//! The hub keeps recent samples raw and older ones as averages over a window;
//! the RES column says which a row is (`raw`, or the window, such as `5m`).

use std::time::{Duration, UNIX_EPOCH};

use muster_client::SeriesPoint;
use muster_proto::AgentName;

use super::output::{self, Table};
use super::{HubConn, agent_error, parse, units};

/// Arguments of `muster agents metrics`.
#[derive(Debug, clap::Args)]
pub(crate) struct MetricsArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent's name.
    name: AgentName,
    /// How far back to look, as a human duration (30m, 1h, 7d).
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse::duration)]
    since: Duration,
}

/// Runs `muster agents metrics`.
pub(crate) async fn show(args: MetricsArgs, json: bool) -> anyhow::Result<()> {
    let since_ms = output::now_ms().saturating_sub(millis(args.since));
    let (client, _events) = args.conn.connect().await?;
    let points = client
        .metrics(&args.name, since_ms)
        .await
        .map_err(agent_error(&args.name))?;
    if points.is_empty() {
        // An empty series is also what a hub might answer for an unknown
        // agent: make sure the agent exists before saying "no samples".
        client
            .agent(&args.name)
            .await
            .map_err(agent_error(&args.name))?;
    }
    client.close().await;
    if json {
        return output::print_json(&points);
    }
    if points.is_empty() {
        eprintln!(
            "no samples from agent {:?} in the last {}",
            args.name.as_str(),
            humantime::format_duration(args.since)
        );
    }
    output::print(&series_table(&points))
}

/// The series as a table, one row per point, in the order given.
pub(crate) fn series_table(points: &[SeriesPoint]) -> String {
    let headers = [
        "TIME",
        "RES",
        "CPU%",
        "MEM",
        "SWAP",
        "DISK",
        "LOAD",
        "NET/S RX/TX",
        "PROCS",
    ];
    let mut table = Table::new(&headers);
    for point in points {
        let sample = &point.sample;
        let at = UNIX_EPOCH + Duration::from_millis(sample.ts_ms);
        table.push(vec![
            humantime::format_rfc3339_seconds(at).to_string(),
            units::resolution(point.resolution_ms),
            units::percent(sample.cpu_percent),
            units::memory(sample),
            units::swap(sample),
            units::disk(sample),
            units::load(sample),
            units::network(sample),
            sample.processes.to_string(),
        ]);
    }
    table.render()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use muster_client::MetricsSample;
    use muster_proto::messages::DiskUsage;

    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn point(resolution_ms: u64, ts_ms: u64) -> SeriesPoint {
        SeriesPoint {
            resolution_ms,
            sample: MetricsSample {
                ts_ms,
                cpu_percent: 12.5,
                mem_used_bytes: GIB * 12 / 10,
                mem_total_bytes: GIB * 156 / 10,
                swap_used_bytes: 0,
                swap_total_bytes: 2 * GIB,
                disks: vec![DiskUsage {
                    mount: "/".into(),
                    used_bytes: 40 * GIB,
                    total_bytes: 100 * GIB,
                }],
                load: [0.42, 0.3, 0.2],
                net_rx_bytes_per_sec: 1_258_291,
                net_tx_bytes_per_sec: 348_160,
                processes: 231,
                ..MetricsSample::default()
            },
        }
    }

    #[test]
    fn series_rows_show_every_column_in_human_units() {
        let text = series_table(&[point(300_000, 1_735_787_045_000), point(0, 0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "TIME", "RES", "CPU%", "MEM", "SWAP", "DISK", "LOAD", "NET/S", "RX/TX", "PROCS"
            ]
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "2025-01-02T03:04:05Z",
                "5m",
                "12.5",
                "1.2G/15.6G",
                "0B/2.0G",
                "40.0G/100G",
                "0.42",
                "1.2M/340K",
                "231"
            ]
        );
        assert!(lines[2].starts_with("1970-01-01T00:00:00Z  raw "), "{text}");
    }

    #[test]
    fn an_empty_series_is_just_the_header() {
        assert_eq!(series_table(&[]).lines().count(), 1);
    }
}
