//! Wall-clock time as the protocol writes it: Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use muster_proto::UnixMillis;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as UnixMillis)
        .unwrap_or(0)
}
