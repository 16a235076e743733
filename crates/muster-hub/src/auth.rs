//! Credentials: minting tokens, and checking a presented token against the store.
//!
//! A token is `<prefix><key id>_<secret>`: a 12-character public key id used
//! to find the record, and a 256-bit random secret of which only the SHA-256
//! is stored. API keys and agent tokens have the prefix `mst_`, enrollment
//! tokens `mse_`, so one is never taken for the other. The hash comparison
//! runs in constant time. Tokens never reach a log: the types holding them
//! mask `Debug`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The prefix of API keys and agent tokens.
pub const TOKEN_PREFIX: &str = "mst_";
pub use muster_proto::enroll::ENROLLMENT_TOKEN_PREFIX;
const KEY_ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;

/// A freshly minted token: the full secret (shown once) and what is stored.
pub struct MintedToken {
    /// The token to hand to its owner.
    pub token: Secret,
    /// Public half, stored in clear to find the record.
    pub key_id: String,
    /// SHA-256 of the secret half.
    pub secret_hash: Vec<u8>,
}

/// Mints a new random API key or agent token.
pub fn mint() -> MintedToken {
    mint_with(TOKEN_PREFIX)
}

/// Mints a new random token with `prefix`.
pub fn mint_with(prefix: &str) -> MintedToken {
    let mut rng = rand::rng();
    let key_id: String = (&mut rng)
        .sample_iter(&Alphanumeric)
        .take(KEY_ID_LEN)
        .map(char::from)
        .collect::<String>()
        .to_ascii_lowercase();
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    MintedToken {
        token: Secret(format!("{prefix}{key_id}_{secret}")),
        secret_hash: hash_secret(&secret),
        key_id,
    }
}

/// Splits a presented API key or agent token into key id and secret, if it
/// has the token shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    parse_with(TOKEN_PREFIX, token)
}

/// Splits a presented token with `prefix` into key id and secret, if it has
/// the token shape.
pub fn parse_with<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?;
    let (key_id, secret) = rest.split_once('_')?;
    (key_id.len() == KEY_ID_LEN && !secret.is_empty()).then_some((key_id, secret))
}

/// Whether `secret` hashes to `stored_hash`, compared in constant time.
pub fn verify(secret: &str, stored_hash: &[u8]) -> bool {
    hash_secret(secret).ct_eq(stored_hash).into()
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A string that must not be logged; `Debug` prints a mask.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must show or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_and_others_do_not() {
        let minted = mint();
        let (key_id, secret) = parse(minted.token.expose()).unwrap();
        assert_eq!(key_id, minted.key_id);
        assert!(verify(secret, &minted.secret_hash));
        assert!(!verify("wrong", &minted.secret_hash));
        assert_eq!(format!("{:?}", minted.token), "Secret(<redacted>)");
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        assert!(parse("").is_none());
        assert!(parse("mst_short_x").is_none());
        assert!(parse("xyz_abcdefghijkl_secret").is_none());
        assert!(parse("mst_abcdefghijkl_").is_none());
    }

    #[test]
    fn enrollment_tokens_are_not_api_keys_and_api_keys_are_not_enrollment_tokens() {
        let minted = mint_with(ENROLLMENT_TOKEN_PREFIX);
        let token = minted.token.expose();
        assert!(
            token.starts_with("mse_") && token.len() == 60,
            "{}",
            token.len()
        );
        let (key_id, secret) = parse_with(ENROLLMENT_TOKEN_PREFIX, token).unwrap();
        assert_eq!(key_id, minted.key_id);
        assert!(verify(secret, &minted.secret_hash));
        assert!(parse(token).is_none());
        assert!(parse_with(ENROLLMENT_TOKEN_PREFIX, mint().token.expose()).is_none());
    }
}
