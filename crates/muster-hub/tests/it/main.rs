//! Integration tests of the hub library: a real hub on 127.0.0.1:0, real
//! in-process agents running real processes, driven through the client crate
//! or a raw WebSocket where the test is about the wire itself.

mod browser;
mod events;
mod fixture;
mod fleet;
mod hostile;
mod jobs;
mod many_agents;
mod metrics;
mod protocol;
mod queueing;
mod rate;
mod replay;
mod roles;
mod rotation;
mod scopes;
mod sessions;
mod slow;
mod storage;
mod upgrade;
