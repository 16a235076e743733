//! Integration tests of the agent: the process executor on real processes, and
//! the connection loop against a scripted hub on a real socket.

mod fake_hub;
mod process;
