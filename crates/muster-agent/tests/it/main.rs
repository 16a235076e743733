//! Integration tests of the agent: the process executor on real processes, the
//! connection loop, the delivery guarantees and host metrics against a scripted
//! hub on a real socket, and the reconnect schedule on paused time.

mod connection;
mod delivery;
mod fake_hub;
mod metrics;
mod process;
mod reconnect;
