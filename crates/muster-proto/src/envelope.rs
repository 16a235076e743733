//! The JSON envelope around every text message, and its two-step decoder.
//!
//! Decoding first reads the envelope's `type`, `id`, `re` and `channel`, then
//! the typed payload. The split lets the receiver answer precisely: text that
//! is not an envelope is `INVALID_MESSAGE`, a `type` it does not know is
//! `UNKNOWN_TYPE`, and a known type with bad `data` is `INVALID_MESSAGE` naming
//! the field — each with the request's `id` whenever it could be read.

use std::borrow::Cow;

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::ids::RequestId;
use crate::messages::Message;

/// A message with its routing fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<M> {
    /// Request id, on messages that expect a reply.
    pub id: Option<RequestId>,
    /// On replies: the `id` of the request answered.
    pub re: Option<RequestId>,
    /// On events delivered through a subscription: the channel.
    pub channel: Option<String>,
    /// The typed message.
    pub msg: M,
}

/// An envelope's fields, read in one pass; `data` is only delimited here,
/// and parsed as the message `type` names.
#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    id: Option<RequestId>,
    #[serde(default)]
    re: Option<RequestId>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Wire<'a, M> {
    #[serde(flatten)]
    msg: &'a M,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    re: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

impl<M: Message> Envelope<M> {
    /// A message that expects no reply.
    pub fn plain(msg: M) -> Self {
        Self {
            id: None,
            re: None,
            channel: None,
            msg,
        }
    }

    /// A request carrying `id`.
    pub fn request(id: RequestId, msg: M) -> Self {
        Self {
            id: Some(id),
            ..Self::plain(msg)
        }
    }

    /// A reply to the request `re` (none for unsolicited messages).
    pub fn reply(re: Option<RequestId>, msg: M) -> Self {
        Self {
            re,
            ..Self::plain(msg)
        }
    }

    /// An event delivered on `channel`.
    pub fn event(channel: impl Into<String>, msg: M) -> Self {
        Self {
            channel: Some(channel.into()),
            ..Self::plain(msg)
        }
    }

    /// Serializes to the JSON text of one WebSocket text frame.
    pub fn encode(&self) -> String {
        let wire = Wire {
            msg: &self.msg,
            id: self.id.as_ref(),
            re: self.re.as_ref(),
            channel: self.channel.as_deref(),
        };
        crate::json::to_string(&wire)
    }

    /// Parses the JSON text of one WebSocket text frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let parts: Parts<'_> = serde_json::from_str(text).map_err(|e| DecodeError::Malformed {
            detail: e.to_string(),
        })?;
        let id = parts.id.filter(RequestId::is_valid);
        let tagged = Tagged {
            kind: &parts.kind,
            data: parts.data,
        };
        let msg = M::deserialize(tagged).map_err(|e| {
            if M::TYPES.contains(&&*parts.kind) {
                DecodeError::InvalidData {
                    id: id.clone(),
                    kind: parts.kind.clone().into_owned(),
                    detail: e.to_string(),
                }
            } else {
                DecodeError::UnknownType {
                    id: id.clone(),
                    kind: parts.kind.clone().into_owned(),
                }
            }
        })?;
        Ok(Self {
            id,
            re: parts.re,
            channel: parts.channel,
            msg,
        })
    }
}

/// A message's `type` and `data`, handed to its (adjacently tagged)
/// `Deserialize` as the two-entry map it expects, without parsing the
/// envelope's text again.
struct Tagged<'a, 'de> {
    kind: &'a str,
    data: Option<&'de RawValue>,
}

impl<'de> serde::Deserializer<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedEntries {
            kind: Some(self.kind),
            data: self.data,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The entries of [`Tagged`]: `type`, then `data` if there is one.
struct TaggedEntries<'a, 'de> {
    kind: Option<&'a str>,
    data: Option<&'de RawValue>,
}

impl<'de> MapAccess<'de> for TaggedEntries<'_, 'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = if self.kind.is_some() {
            "type"
        } else if self.data.is_some() {
            "data"
        } else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match (self.kind.take(), self.data.take()) {
            (Some(kind), data) => {
                self.data = data;
                seed.deserialize(StrDeserializer::new(kind))
            }
            (None, Some(data)) => seed.deserialize(data),
            (None, None) => Err(serde::de::Error::custom("no value left")),
        }
    }
}

/// Why a text frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, not an object, or no string `type`.
    #[error("malformed message: {detail}")]
    Malformed {
        /// Parser message.
        detail: String,
    },
    /// The `type` is not known to the receiver.
    #[error("unknown message type {kind:?}")]
    UnknownType {
        /// The request id, when it could be read.
        id: Option<RequestId>,
        /// The unknown type.
        kind: String,
    },
    /// The `type` is known but `data` does not match it.
    #[error("invalid {kind} message: {detail}")]
    InvalidData {
        /// The request id, when it could be read.
        id: Option<RequestId>,
        /// The message type.
        kind: String,
        /// Parser message, naming the field.
        detail: String,
    },
}

impl DecodeError {
    /// The error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownType { .. } => ErrorCode::UnknownType,
            Self::Malformed { .. } | Self::InvalidData { .. } => ErrorCode::InvalidMessage,
        }
    }

    /// The request id to put in the error's `re`, when known.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Malformed { .. } => None,
            Self::UnknownType { id, .. } | Self::InvalidData { id, .. } => id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ClientToHub, Heartbeat, HubToClient, RunRef};

    #[test]
    fn request_round_trips_with_id() {
        let run = crate::RunId::generate();
        let env = Envelope::request(
            RequestId("7".into()),
            ClientToHub::RunCancel(RunRef { run }),
        );
        let text = env.encode();
        assert!(text.contains(r#""type":"run.cancel""#), "{text}");
        assert!(text.contains(r#""id":"7""#), "{text}");
        assert_eq!(Envelope::<ClientToHub>::decode(&text).unwrap(), env);
    }

    #[test]
    fn event_carries_channel() {
        let env = Envelope::event("fleet", HubToClient::Heartbeat(Heartbeat { seq: 3 }));
        let back = Envelope::<HubToClient>::decode(&env.encode()).unwrap();
        assert_eq!(back.channel.as_deref(), Some("fleet"));
    }

    #[test]
    fn not_json_is_malformed() {
        let err = Envelope::<ClientToHub>::decode("{nope").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidMessage);
        assert_eq!(err.request_id(), None);
    }

    #[test]
    fn unknown_type_keeps_request_id() {
        let err =
            Envelope::<ClientToHub>::decode(r#"{"type":"x.y","id":"9","data":{}}"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownType);
        assert_eq!(err.request_id(), Some(RequestId("9".into())));
    }

    #[test]
    fn bad_data_for_known_type_is_invalid() {
        let err =
            Envelope::<ClientToHub>::decode(r#"{"type":"run.get","id":"1","data":{"run":5}}"#)
                .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidMessage);
        assert!(err.to_string().contains("run.get"), "{err}");
    }

    #[test]
    fn every_listed_type_is_known_to_serde() {
        // A type listed in TYPES but misspelt in the enum would turn valid
        // requests into INVALID_MESSAGE; decoding `{}` must never say UNKNOWN_TYPE.
        for kind in ClientToHub::TYPES {
            let text = format!(r#"{{"type":"{kind}","data":{{}}}}"#);
            match Envelope::<ClientToHub>::decode(&text) {
                Ok(_) => {}
                Err(e) => assert!(!e.to_string().contains("unknown variant"), "{kind}: {e}"),
            }
        }
    }
}
