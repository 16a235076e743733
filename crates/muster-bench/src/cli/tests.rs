//! Tests of the command line: defaults, bounds, sweeps and the plans they make.

use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use muster_proto::jobs::BatchSize;
use muster_proto::limits::Limits;

use super::fleet::{DEFAULT_FANOUT_RATES, MAX_JOB_AGENTS};
use super::runs::DEFAULT_RATES;
use super::*;
use crate::idle::Kind;

const BASE: [&str; 5] = [
    "muster-bench",
    "--hub",
    "http://127.0.0.1:1",
    "--token",
    "t",
];

fn parse(extra: &[&str]) -> anyhow::Result<Plan> {
    Cli::try_parse_from(BASE.iter().chain(extra))
        .context("parsing the command line")?
        .plan()
}

fn runs(extra: &[&str]) -> RunsPlan {
    match parse(extra).unwrap() {
        Plan::Runs(runs) => runs,
        other => panic!("not a runs plan: {other:?}"),
    }
}

#[test]
fn command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn no_scenario_means_all_with_defaults() {
    let plan = runs(&[]);
    let roundtrip = plan.roundtrip.unwrap();
    assert_eq!(roundtrip.rates, DEFAULT_RATES);
    assert_eq!(roundtrip.concurrency, [32]);
    assert_eq!(roundtrip.in_flight, 1000);
    assert_eq!(roundtrip.budget(), Duration::from_secs(60));
    let output = plan.output.unwrap();
    assert_eq!((output.bytes, output.chunk), (62_914_560, 10_240));
}

#[test]
fn rates_repeat_and_concurrency_sweeps() {
    let plan = runs(&[
        "roundtrip",
        "--rate",
        "7",
        "--rate",
        "200000",
        "--concurrency",
        "1,8",
        "--concurrency",
        "128",
        "--max-duration",
        "1s",
    ]);
    assert!(plan.output.is_none());
    let roundtrip = plan.roundtrip.unwrap();
    assert_eq!(roundtrip.rates, [7, 200_000]);
    assert_eq!(roundtrip.concurrency, [1, 8, 128]);
    assert_eq!(roundtrip.max_duration, Duration::from_secs(1));
}

#[test]
fn concurrency_is_capped_at_the_queue_limit() {
    assert!(parse(&["roundtrip", "--concurrency", "1001"]).is_err());
    assert!(parse(&["roundtrip", "--concurrency", "4,0"]).is_err());
    assert!(parse(&["roundtrip", "--in-flight", "1001"]).is_err());
    assert!(parse(&["roundtrip", "--duration", "0s"]).is_err());
    let plan = runs(&["roundtrip", "--in-flight", "900"]);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_output_chunk_bytes: 10_240,
        output_batch_ms: 50,
        max_output_bytes_per_run: 1 << 26,
        max_queue_per_agent: 500,
    };
    let err = plan.check_limits(&limits).unwrap_err().to_string();
    assert!(err.contains("queue of 500 runs"), "{err}");
}

#[test]
fn bytes_over_the_cap_are_refused() {
    let plan = runs(&["output", "--bytes", "100"]);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_output_chunk_bytes: 10_240,
        output_batch_ms: 50,
        max_output_bytes_per_run: 99,
        max_queue_per_agent: 1000,
    };
    let err = plan.check_limits(&limits).unwrap_err().to_string();
    assert!(err.contains("per-run output cap of 99 bytes"), "{err}");
}

#[test]
fn job_runs_with_its_defaults() {
    let Plan::Job(job) = parse(&["job"]).unwrap() else {
        panic!("not a job plan");
    };
    assert_eq!((job.agents, job.command_bytes, job.batch), (200, 0, None));
    assert_eq!(
        (job.concurrency, job.timeout),
        (256, Duration::from_secs(120))
    );
    assert_eq!(parse(&["job"]).unwrap().budget(), Duration::from_secs(120));
}

#[test]
fn job_flags_parse_and_are_bounded() {
    let Plan::Job(job) = parse(&[
        "job",
        "--agents",
        "10000",
        "--command-bytes",
        "12",
        "--batch",
        "25%",
        "--timeout",
        "5s",
    ])
    .unwrap() else {
        panic!("not a job plan");
    };
    assert_eq!((job.agents, job.command_bytes), (10_000, 12));
    assert_eq!(job.batch, Some(BatchSize::Percent(25)));
    assert_eq!(job.timeout, Duration::from_secs(5));
    let too_many = (MAX_JOB_AGENTS + 1).to_string();
    for bad in [
        &["job", "--agents", "0"][..],
        &["job", "--agents", &too_many],
        &["job", "--batch", "0"],
        &["job", "--batch", "101%"],
        &["job", "--batch", "x"],
        &["job", "--command-bytes", "10241"],
        &["job", "--timeout", "0s"],
        &["job", "--timeout", "16m"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn idle_defaults_and_bounds() {
    let Plan::Idle(idle) = parse(&["idle"]).unwrap() else {
        panic!("not an idle plan");
    };
    assert_eq!(
        (idle.kind, idle.count, idle.concurrency),
        (Kind::Client, 15_000, 256)
    );
    assert_eq!(idle.settle, Duration::from_secs(2));
    let Plan::Idle(agents) = parse(&["idle", "--kind", "agent", "--count", "500"]).unwrap() else {
        panic!("not an idle plan");
    };
    assert_eq!((agents.kind, agents.count), (Kind::Agent, 500));
    for bad in [
        &["idle", "--count", "18001"][..],
        &["idle", "--kind", "robot"],
        &["idle", "--settle", "3m"],
        &["idle", "--handshake-concurrency", "0"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn fanout_rates_come_from_either_flag() {
    let Plan::Fanout(fanout) = parse(&["fanout"]).unwrap() else {
        panic!("not a fanout plan");
    };
    assert_eq!(fanout.rates, DEFAULT_FANOUT_RATES);
    assert_eq!((fanout.subscribers, fanout.chunk_bytes), (1000, 64));
    let Plan::Fanout(fanout) = parse(&[
        "fanout",
        "--subscribers",
        "50",
        "--deliveries-per-s",
        "1000",
        "--deliveries-per-s",
        "20",
    ])
    .unwrap() else {
        panic!("not a fanout plan");
    };
    assert_eq!(fanout.rates, [20, 1]);
    assert!(fanout.budget() > Duration::from_secs(10));
    for bad in [
        &["fanout", "--rate", "5", "--deliveries-per-s", "9"][..],
        &["fanout", "--chunk-bytes", "7"],
        &[
            "fanout",
            "--subscribers",
            "1",
            "--deliveries-per-s",
            "20000",
        ],
        &["fanout", "--duration", "0s"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn storm_defaults() {
    let Plan::Storm(storm) = parse(&["storm", "--hub-pid", "42"]).unwrap() else {
        panic!("not a storm plan");
    };
    assert_eq!((storm.count, storm.concurrency), (15_000, 256));
    let cli = Cli::try_parse_from(BASE.iter().chain(&["--hub-pid", "7", "storm"])).unwrap();
    assert_eq!(cli.hub_pid, Some(7));
}

#[test]
fn secrets_are_masked() {
    let cli = Cli::try_parse_from(BASE).unwrap();
    assert!(!format!("{cli:?}").contains("token: t"));
}
