//! The engine driven as the hub drives it, inputs in and batches out, with a
//! fake fleet around it and a model of what the store committed.
//!
//! `fleet` plays the agents, the clients and the writer, and `inputs` builds
//! what they say; `model` checks each
//! batch and the engine's own state against the promises of protocol.md §7;
//! `sim` ties them together and turns the operations of `ops` into inputs;
//! `properties` runs random sequences of them; `reports` pins single hostile
//! agent reports down; `removal` shows what becomes of runs whose agent is
//! removed.

mod fleet;
mod inputs;
mod model;
mod ops;
mod principals;
mod properties;
mod removal;
mod reports;
mod sim;
