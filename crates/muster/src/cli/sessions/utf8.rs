//! Turning byte chunks into text when a character may be split between two
//! chunks (output frames, reads from stdin): [`Utf8Decoder`] keeps the
//! incomplete end of one chunk for the next, and replaces bytes that can
//! never be UTF-8 with U+FFFD.

/// An incremental UTF-8 decoder.
#[derive(Clone, Debug, Default)]
pub(crate) struct Utf8Decoder {
    /// The start of a character whose end has not come yet (at most 3 bytes).
    carry: Vec<u8>,
}

impl Utf8Decoder {
    /// The complete characters of what came so far and `bytes`; an
    /// unfinished character at the end waits for the next call.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> String {
        let mut pending = std::mem::take(&mut self.carry);
        pending.extend_from_slice(bytes);
        let mut text = String::with_capacity(pending.len());
        let mut rest = &pending[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    // `valid_up_to` marks valid UTF-8.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match err.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            self.carry = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        text
    }

    /// What is left at the end of the stream: an unfinished character
    /// becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        if std::mem::take(&mut self.carry).is_empty() {
            String::new()
        } else {
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

/// Splits `text` into pieces of at most `max` bytes, never inside a character.
pub(crate) fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, after) = rest.split_at(cut);
        pieces.push(piece);
        rest = after;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_between_chunks_comes_out_whole() {
        let mut decoder = Utf8Decoder::default();
        let check = "é✓🚀";
        let bytes = check.as_bytes();
        let mut text = String::new();
        for byte in bytes {
            text.push_str(&decoder.decode(std::slice::from_ref(byte)));
        }
        text.push_str(&decoder.finish());
        assert_eq!(text, check);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.decode(b"a\xffb\xe2\x9c"), "a\u{fffd}b");
        assert_eq!(decoder.decode(b"x"), "\u{fffd}x");
        assert_eq!(decoder.decode(b"\xf0\x9f"), "");
        assert_eq!(decoder.finish(), "\u{fffd}");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn chunks_never_cut_a_character() {
        assert_eq!(chunks("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(chunks("aé✓", 3), ["aé", "✓"]);
        assert!(chunks("", 4).is_empty());
    }
}
