//! Integration tests of the agent: the process executor on real processes, the
//! connection loop, the delivery guarantees and host metrics against a scripted
//! hub on a real socket, agent events on the local socket, and the reconnect
//! schedule on paused time; declared actions and the example site scripts
//! run through them; sessions on pipes and on pseudo-terminals.

mod actions;
mod connection;
mod delivery;
mod events;
mod examples;
mod fake_hub;
mod metrics;
mod process;
mod reconnect;
mod sessions;
mod terminals;
