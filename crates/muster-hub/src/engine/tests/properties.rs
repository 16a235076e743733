//! Random sequences of operations against a small fleet. After every step
//! and once everything is at rest, the checks of `model` hold.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm};

use super::fleet::config;
use super::ops::{Setup, any_op, bursts, setup};
use super::sim::Sim;
use crate::config::HubConfig;

/// Cases per property: enough to meet the rare interleavings, few enough
/// for a debug build to finish in seconds; `PROPTEST_CASES` asks for more
/// in a longer hunt. XorShift, because the default ChaCha generator takes
/// most of the time in an unoptimized build.
fn cases(cases: u32) -> Config {
    let asked = std::env::var("PROPTEST_CASES").ok();
    Config {
        cases: asked.and_then(|n| n.parse().ok()).unwrap_or(cases),
        rng_algorithm: RngAlgorithm::XorShift,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever clients, agents and time do: queues agree with runs, every
    /// run moves by the lifecycle table and ends exactly once, a key
    /// creates one run, and output is stored without gaps or repeats.
    #[test]
    fn every_run_ends_exactly_once(
        setup in setup(),
        ops in vec(any_op(), 1..200),
        expire in any::<bool>(),
    ) {
        let mut sim = Sim::new(config(), &setup);
        for op in &ops {
            sim.step(op);
        }
        sim.finish(expire);
    }
}

proptest! {
    #![proptest_config(cases(64))]

    /// With 1024 slots and bursts of up to 32 creates in flight, most of
    /// them parked behind key lookups, no run ever waits for a slot.
    #[test]
    fn no_run_waits_while_its_agent_has_a_free_slot(ops in bursts()) {
        let setup = Setup {
            online: vec![Some(1024), None, None],
            recovered: Vec::new(),
        };
        let config = HubConfig {
            max_queue_per_agent: 1000,
            ..config()
        };
        let mut sim = Sim::new(config, &setup);
        for op in &ops {
            sim.step(op);
        }
        sim.finish(false);
    }
}
