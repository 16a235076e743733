//! The engine driven as the hub drives it, inputs in and batches out, with a
//! fake fleet around it and a model of what the store committed.
//!
//! `fleet` plays the agents, the clients and the writer; `model` checks each
//! batch and the engine's own state against the promises of protocol.md §7;
//! `sim` ties them together and turns the operations of `ops` into inputs;
//! `properties` runs random sequences of them; `reports` pins single hostile
//! agent reports down.

mod fleet;
mod model;
mod ops;
mod properties;
mod reports;
mod sim;
