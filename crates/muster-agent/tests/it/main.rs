//! Integration tests of the agent: the process executor on real processes, the
//! connection loop and the delivery guarantees against a scripted hub on a real
//! socket, and the reconnect schedule on paused time.

mod connection;
mod delivery;
mod fake_hub;
mod process;
mod reconnect;
