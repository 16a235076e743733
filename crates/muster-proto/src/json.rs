//! Writing JSON without growing a fresh buffer for every message.
//!
//! `serde_json::to_string` starts from a 128-byte buffer and doubles it as
//! it goes, so a run's status (about 500 bytes) costs three reallocations and
//! copies. Here each thread keeps one buffer that has already grown; a
//! message is written into it and copied out once, at its exact length.

use std::cell::RefCell;

use serde::Serialize;

/// A thread's buffer is kept only up to this size: a rare large message
/// (a page of a listing) does not pin its memory for the thread's life.
const KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with the JSON text of `value`.
pub fn with_json<T: Serialize + ?Sized, R>(value: &T, f: impl FnOnce(&str) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let result = write(&mut buffer, value, f);
            if buffer.capacity() > KEEP_BYTES {
                *buffer = Vec::new();
            }
            result
        }
        // Only if `value`'s own serialization writes JSON through here.
        Err(_) => write(&mut Vec::new(), value, f),
    })
}

/// The JSON text of `value`, in a string of exactly its length.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    with_json(value, str::to_owned)
}

fn write<T: Serialize + ?Sized, R>(
    buffer: &mut Vec<u8>,
    value: &T,
    f: impl FnOnce(&str) -> R,
) -> R {
    serde_json::to_writer(&mut *buffer, value).expect("protocol types always serialize");
    f(std::str::from_utf8(buffer).expect("serde_json writes UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_matches_serde_json_and_the_buffer_is_reused_or_dropped() {
        let small = serde_json::json!({"a": [1, 2, 3], "b": "x\u{1}y"});
        assert_eq!(to_string(&small), serde_json::to_string(&small).unwrap());
        let large = "z".repeat(2 * KEEP_BYTES);
        assert_eq!(to_string(&large).len(), large.len() + 2);
        SCRATCH.with(|cell| assert_eq!(cell.borrow().capacity(), 0));
        to_string(&small);
        SCRATCH.with(|cell| assert!(cell.borrow().capacity() > 0));
    }

    #[test]
    fn a_nested_call_gets_its_own_buffer() {
        struct Nested;
        impl Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&to_string(&[1, 2]))
            }
        }
        assert_eq!(to_string(&Nested), r#""[1,2]""#);
    }
}
