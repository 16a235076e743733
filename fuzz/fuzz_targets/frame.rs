//! The binary output frame decoder: any bytes get an answer, and a frame
//! that decodes encodes back to a frame with the same header and payload.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use muster_proto::OutputFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = OutputFrame::decode(Bytes::copy_from_slice(data)) {
        let again = OutputFrame::decode(OutputFrame::encode(&frame.header, &frame.payload))
            .expect("a re-encoded frame decodes");
        assert_eq!(again.header, frame.header);
        assert_eq!(again.payload, frame.payload);
    }
});
