//! Fault tests on the output path: hub kill -9 and restarts, cut connections.
