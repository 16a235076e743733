//! The JSON envelope decoder, on both endpoints: any text gets an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::{AgentToHub, ClientToHub, Envelope, ErrorCode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Envelope::<ClientToHub>::decode(text) {
        Ok(envelope) => {
            // What decoded encodes to text that decodes again.
            let again = Envelope::<ClientToHub>::decode(&envelope.encode());
            assert!(again.is_ok(), "re-encoded client message did not decode");
        }
        Err(e) => assert!(matches!(
            e.code(),
            ErrorCode::InvalidMessage | ErrorCode::UnknownType
        )),
    }
    if let Err(e) = Envelope::<AgentToHub>::decode(text) {
        assert!(matches!(
            e.code(),
            ErrorCode::InvalidMessage | ErrorCode::UnknownType
        ));
    }
});
