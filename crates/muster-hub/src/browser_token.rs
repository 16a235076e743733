//! Browser tokens: short-lived signed tokens that a browser page gets for an
//! API key over HTTP (`POST /v1/browser-token`) and presents in its client
//! `hello` instead of the key, so the page keeps no long-lived secret.
//!
//! A token is a JWT signed with HMAC-SHA256 under a 256-bit secret the hub
//! generates once and keeps in its store. It names its API key by key id
//! and counts only while that key does: revoking, rotating or expiring the
//! key voids every token issued for it, and a connection opened with one is
//! closed with the key's. Its lifetime is `browser_token_ttl_ms`, never past
//! the key's own expiry; it is checked at `hello`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use muster_proto::UnixMillis;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// The store setting that holds the signing secret.
pub(crate) const SECRET_SETTING: &str = "browser_token_secret";
/// Bytes of a signing secret.
const SECRET_BYTES: usize = 32;

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The API key's name.
    sub: String,
    /// The API key's id.
    kid: String,
    /// Issued at, in Unix seconds.
    iat: u64,
    /// Expires at, in Unix seconds.
    exp: u64,
}

/// A token's API key, once its signature and lifetime are checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The key's name.
    pub(crate) name: String,
    /// The key's id.
    pub(crate) key_id: String,
}

/// Issues and checks browser tokens under one secret.
pub(crate) struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer under a stored `secret`; `None` if it is not one this hub
    /// generated (too short).
    pub(crate) fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < SECRET_BYTES {
            return None;
        }
        Some(Self {
            encoding: EncodingKey::from_secret(secret).ok()?,
            decoding: DecodingKey::from_secret(secret).ok()?,
        })
    }

    /// A signer under a new random secret, and the secret to store.
    pub(crate) fn generate() -> (Self, Vec<u8>) {
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::rng().fill(&mut secret[..]);
        let signer = Self::new(&secret).expect("a generated secret is long enough");
        (signer, secret)
    }

    /// A token for key `key_id` named `name`, valid from `now` for `ttl_ms`
    /// or until `key_expires_ms`, whichever is sooner; and when it expires
    /// (on a whole second, rounded up).
    pub(crate) fn issue(
        &self,
        name: &str,
        key_id: &str,
        now: UnixMillis,
        ttl_ms: u64,
        key_expires_ms: Option<UnixMillis>,
    ) -> anyhow::Result<(String, UnixMillis)> {
        let until = now
            .saturating_add(ttl_ms)
            .min(key_expires_ms.unwrap_or(u64::MAX));
        let claims = Claims {
            sub: name.to_owned(),
            kid: key_id.to_owned(),
            iat: now / 1000,
            exp: until.div_ceil(1000),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims.exp.saturating_mul(1000)))
    }

    /// The key a token names, if its signature holds and it has not
    /// expired at `now`.
    pub(crate) fn verify(&self, token: &str, now: UnixMillis) -> Option<Verified> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the hub's clock below, to the millisecond.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        (now < claims.exp.saturating_mul(1000)).then_some(Verified {
            name: claims.sub,
            key_id: claims.kid,
        })
    }
}

/// Whether `token` has the shape of a browser token (a JWT) rather than an
/// API key.
pub(crate) fn looks_like(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = 1_765_000_000_000;

    #[test]
    fn a_token_verifies_until_it_expires_and_only_under_its_secret() {
        let (signer, _) = Signer::generate();
        let (token, expires) = signer.issue("ops", "k1", NOW, 60_000, None).unwrap();
        assert!(looks_like(&token));
        assert_eq!(expires, NOW + 60_000);
        let verified = Verified {
            name: "ops".into(),
            key_id: "k1".into(),
        };
        assert_eq!(signer.verify(&token, NOW), Some(verified));
        assert_eq!(signer.verify(&token, expires), None, "expired");
        let (other, _) = Signer::generate();
        assert!(Signer::new(b"short").is_none());
        assert_eq!(other.verify(&token, NOW), None, "another secret");
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(signer.verify(&tampered, NOW), None, "a changed signature");
        assert!(!looks_like("mst_abcdefghijkl_secret"));
    }

    #[test]
    fn a_token_never_outlives_its_key() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let (_, expires) = signer
            .issue("ops", "k1", NOW, 900_000, Some(NOW + 5_000))
            .unwrap();
        assert_eq!(expires, NOW + 5_000);
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef").unwrap();
        // {"alg":"none"} with valid claims and no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let claims = "eyJzdWIiOiJvcHMiLCJraWQiOiJrMSIsImlhdCI6MCwiZXhwIjo5OTk5OTk5OTk5fQ";
        assert_eq!(signer.verify(&format!("{header}.{claims}."), NOW), None);
    }
}
