//! What can happen to the hub, as values proptest generates and shrinks:
//! client requests, agent reports valid and hostile, connections coming and
//! going, time passing, and the writer and the store doing their part.
//! Runs are named by [`Pick`], resolved when the operation happens, so a
//! shrunk sequence still aims at the runs that exist by then.

use std::ops::RangeInclusive;

use muster_proto::RunState;
use muster_proto::messages::RunOutcome;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::fleet::{AGENTS, Recovered};

/// One thing that happens.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// A client creates a run on agent `agent` ([`AGENTS`] is unknown).
    Create {
        client: usize,
        agent: usize,
        priority: i32,
        /// An idempotency key from a tiny pool, so that keys repeat.
        key: Option<u8>,
        ttl: Ttl,
    },
    /// A client cancels a run.
    Cancel(Pick),
    /// `run.started`.
    Started { run: Pick, from: Sender },
    /// An output frame of `len` bytes.
    Output {
        run: Pick,
        from: Sender,
        seq: Seq,
        len: u8,
    },
    /// `run.exited`, whatever state the run is in.
    Exited {
        run: Pick,
        from: Sender,
        outcome: RunOutcome,
    },
    /// An agent connects (again). `reports` says what its `hello` reports
    /// of its runs in flight, in id order, round and round; `extra` adds
    /// one report about any run.
    Connect {
        agent: usize,
        max_concurrency: u32,
        reports: Vec<Report>,
        extra: Option<(Pick, Report)>,
    },
    /// A connection of an agent ends: its latest, or an older one (`stale`).
    Disconnect { agent: usize, stale: bool },
    /// Time passes by this many milliseconds, and the sweep runs.
    Tick(u64),
    /// The writer takes the batch, commits it and carries its effects out.
    Batch,
    /// The store answers the idempotency-key lookups asked so far.
    Lookups,
    /// Released keys come back to the engine.
    Release,
}

/// A run's time to live in `run.create`.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ttl {
    /// The hub's default.
    Default,
    /// Only if the agent is connected now.
    Zero,
    /// This many milliseconds.
    Ms(u64),
}

/// Which run an operation is about.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pick {
    /// The n-th of the runs the engine holds, in id order (wrapping).
    Live(usize),
    /// The n-th most recent run id a create asked for, whatever became of it.
    Asked(usize),
    /// A run nobody created.
    Unknown,
}

/// Which agent reports.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sender {
    /// The run's own agent.
    Owner,
    /// Agent n, whether or not the run is its own.
    Agent(usize),
}

/// The seq of an output frame, relative to the one the hub expects.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seq {
    /// Exactly the expected one.
    Next,
    /// The one before it: a duplicate.
    Repeat,
    /// Past it by one more than this: a gap.
    Skip(u8),
    /// `u64::MAX`.
    Last,
}

/// What an agent's `hello` says of a run.
#[derive(Clone, Copy, Debug)]
pub(super) enum Report {
    Running,
    Finished,
    Unknown,
    /// Nothing: the agent does not list it.
    Absent,
}

/// How the fleet starts: each agent online with this many slots, or
/// offline; and the runs the store held.
#[derive(Clone, Debug)]
pub(super) struct Setup {
    pub(super) online: Vec<Option<u32>>,
    pub(super) recovered: Vec<Recovered>,
}

/// A small fleet, some of it online, and a few recovered runs.
pub(super) fn setup() -> impl Strategy<Value = Setup> {
    let online = vec(option::of(1..=3u32), AGENTS);
    let recovered = (0..AGENTS, recovered_state(), next_seq()).prop_map(|(agent, state, seq)| {
        let next_seq = if state == RunState::Running { seq } else { 0 };
        Recovered {
            agent,
            state,
            next_seq,
        }
    });
    (online, vec(recovered, 0..3)).prop_map(|(online, recovered)| Setup { online, recovered })
}

/// Anything, in proportions that keep runs moving.
pub(super) fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => create(0..=AGENTS, 0..3),
        2 => pick().prop_map(Op::Cancel),
        4 => (pick(), sender()).prop_map(|(run, from)| Op::Started { run, from }),
        6 => (pick(), sender(), seq(), 0..=8u8)
            .prop_map(|(run, from, seq, len)| Op::Output { run, from, seq, len }),
        4 => (pick(), sender(), outcome())
            .prop_map(|(run, from, outcome)| Op::Exited { run, from, outcome }),
        2 => connect(0..AGENTS, 1..=3),
        2 => (0..AGENTS, any::<bool>()).prop_map(|(agent, stale)| Op::Disconnect { agent, stale }),
        3 => (0..=120u64).prop_map(Op::Tick),
        4 => Just(Op::Batch),
        2 => Just(Op::Lookups),
        2 => Just(Op::Release),
    ]
}

/// Rounds of up to 32 creates for agent 0, most with keys from a pool of
/// 48, each followed by a few operations that let the writer, the store
/// and the agent catch up.
pub(super) fn bursts() -> impl Strategy<Value = Vec<Op>> {
    let burst = vec(create(0..=0, 0..48), 1..=32);
    let catch_up = prop_oneof![
        3 => Just(Op::Batch),
        3 => Just(Op::Lookups),
        2 => Just(Op::Release),
        2 => (0..8usize).prop_map(|n| Op::Started { run: Pick::Live(n), from: Sender::Owner }),
        2 => (0..8usize, outcome()).prop_map(|(n, outcome)| Op::Exited {
            run: Pick::Live(n),
            from: Sender::Owner,
            outcome,
        }),
        1 => connect(0..1, 1024..=1024),
        1 => any::<bool>().prop_map(|stale| Op::Disconnect { agent: 0, stale }),
    ];
    let round = (burst, vec(catch_up, 0..8)).prop_map(|(mut ops, more)| {
        ops.extend(more);
        ops
    });
    vec(round, 1..12).prop_map(|rounds| rounds.concat())
}

fn create(agents: RangeInclusive<usize>, keys: std::ops::Range<u8>) -> impl Strategy<Value = Op> {
    let priority = prop_oneof![8 => -2..=2i32, 1 => Just(101)];
    let ttl = prop_oneof![
        4 => Just(Ttl::Default),
        1 => Just(Ttl::Zero),
        2 => (1..=100u64).prop_map(Ttl::Ms),
    ];
    let key = option::weighted(0.6, keys);
    (0..2usize, agents, priority, key, ttl).prop_map(|(client, agent, priority, key, ttl)| {
        Op::Create {
            client,
            agent,
            priority,
            key,
            ttl,
        }
    })
}

fn connect(
    agents: std::ops::Range<usize>,
    concurrency: RangeInclusive<u32>,
) -> impl Strategy<Value = Op> {
    let extra = option::weighted(0.3, (pick(), report()));
    (agents, concurrency, vec(report(), 0..4), extra).prop_map(
        |(agent, max_concurrency, reports, extra)| Op::Connect {
            agent,
            max_concurrency,
            reports,
            extra,
        },
    )
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => (0..8usize).prop_map(Pick::Live),
        3 => (0..8usize).prop_map(Pick::Asked),
        1 => Just(Pick::Unknown),
    ]
}

fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![8 => Just(Sender::Owner), 1 => (0..AGENTS).prop_map(Sender::Agent)]
}

fn seq() -> impl Strategy<Value = Seq> {
    prop_oneof![
        6 => Just(Seq::Next),
        2 => Just(Seq::Repeat),
        1 => (0..4u8).prop_map(Seq::Skip),
        1 => Just(Seq::Last),
    ]
}

fn outcome() -> impl Strategy<Value = RunOutcome> {
    prop_oneof![
        Just(RunOutcome::Completed),
        Just(RunOutcome::Failed),
        Just(RunOutcome::TimedOut),
        Just(RunOutcome::Cancelled),
        Just(RunOutcome::Rejected),
    ]
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        3 => Just(Report::Running),
        2 => Just(Report::Finished),
        1 => Just(Report::Unknown),
        2 => Just(Report::Absent),
    ]
}

fn recovered_state() -> impl Strategy<Value = RunState> {
    prop_oneof![
        Just(RunState::Queued),
        Just(RunState::Dispatched),
        Just(RunState::Running),
    ]
}

fn next_seq() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(3), Just(u64::MAX)]
}
