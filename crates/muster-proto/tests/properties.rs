//! Properties of the three decoders that take bytes from peers: the JSON
//! envelope, the binary output frame, and the selector parser. Whatever they
//! are given, they answer (never panic), with a documented code or column,
//! and what they encode they decode back unchanged.

use std::collections::BTreeMap;

use bytes::Bytes;
use muster_proto::types::OutputStream;
use muster_proto::{
    AgentToHub, ClientToHub, Envelope, ErrorCode, OutputFrame, OutputHeader, RunId, Selector,
};
use proptest::prelude::*;

const TYPES: [&str; 8] = [
    "hello",
    "agent.list",
    "run.create",
    "run.get",
    "subscribe",
    "key.create",
    "output.ack",
    "nope",
];

/// JSON values of any shape, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn decoded_code<M: muster_proto::messages::Message>(text: &str) -> Option<ErrorCode> {
    Envelope::<M>::decode(text).err().map(|e| e.code())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_envelope_decoder_answers_any_text_with_a_documented_code(text in ".{0,200}") {
        for code in [decoded_code::<ClientToHub>(&text), decoded_code::<AgentToHub>(&text)]
            .into_iter()
            .flatten()
        {
            prop_assert!(matches!(code, ErrorCode::InvalidMessage | ErrorCode::UnknownType), "{code:?}");
        }
    }

    #[test]
    fn the_envelope_decoder_answers_any_json_under_any_type(
        kind in prop::sample::select(&TYPES[..]),
        data in json(),
        id in prop::option::of(".{0,80}"),
    ) {
        let mut envelope = serde_json::json!({"type": kind, "data": data});
        if let Some(id) = id {
            envelope["id"] = id.into();
        }
        let text = envelope.to_string();
        if let Err(e) = Envelope::<ClientToHub>::decode(&text) {
            let code = e.code();
            prop_assert!(matches!(code, ErrorCode::InvalidMessage | ErrorCode::UnknownType));
            // What was readable of the id comes back for the error's `re`.
            if let Some(id) = e.request_id() {
                prop_assert!(id.is_valid(), "{id}");
            }
        }
    }

    #[test]
    fn a_decoded_envelope_encodes_to_itself(name in "[a-z0-9][a-z0-9._-]{0,20}", id in "[a-z0-9]{1,64}") {
        let text = serde_json::json!({"type": "agent.get", "id": id, "data": {"name": name}}).to_string();
        let decoded = Envelope::<ClientToHub>::decode(&text).unwrap();
        let again = Envelope::<ClientToHub>::decode(&decoded.encode()).unwrap();
        prop_assert_eq!(decoded.encode(), again.encode());
    }

    #[test]
    fn the_frame_decoder_answers_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = OutputFrame::decode(Bytes::from(bytes));
    }

    #[test]
    fn a_frame_decodes_to_what_was_encoded_and_no_prefix_of_it_passes(
        seq in any::<u64>(),
        offset in any::<u64>(),
        stderr in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        cut in any::<prop::sample::Index>(),
    ) {
        let header = OutputHeader {
            run: RunId::generate(),
            stream: if stderr { OutputStream::Stderr } else { OutputStream::Stdout },
            seq,
            offset,
            at: None,
        };
        let frame = OutputFrame::encode(&header, &payload);
        let decoded = OutputFrame::decode(frame.clone()).unwrap();
        prop_assert_eq!(&decoded.header, &header);
        prop_assert_eq!(&decoded.payload[..], &payload[..]);
        // A frame cut short inside its header never decodes as one.
        let header_len = frame.len() - payload.len();
        let at = cut.index(header_len);
        prop_assert!(OutputFrame::decode(frame.slice(..at)).is_err(), "a prefix of {at} bytes decoded");
    }

    #[test]
    fn the_selector_parser_answers_any_text_with_a_column_inside_it(text in ".{0,60}") {
        match Selector::parse(&text) {
            Ok(selector) => {
                // What it prints parses back to the same selector.
                let printed = selector.to_string();
                prop_assert_eq!(Selector::parse(&printed).unwrap(), selector.clone());
                let labels = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
                let _ = selector.matches("web-1", &labels);
            }
            Err(e) => {
                let chars = text.chars().count();
                prop_assert!(e.column >= 1 && e.column <= chars + 1, "column {} of {chars}", e.column);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn selectors_made_of_its_grammar_parse(
        terms in prop::collection::vec(("[a-z][a-z0-9]{0,6}", prop::sample::select(&["=", "!=", "=="][..]), "[a-z0-9]{1,6}"), 1..5),
    ) {
        let text = terms
            .iter()
            .map(|(k, op, v)| format!("{k}{op}{v}"))
            .collect::<Vec<_>>()
            .join(",");
        prop_assert!(Selector::parse(&text).is_ok(), "{text}");
    }
}
