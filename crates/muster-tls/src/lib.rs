//! TLS for Muster: the hub's listener, and the dialer the client and the
//! agent share.
//!
//! Every TLS configuration in the binary uses one crypto provider,
//! aws-lc-rs, with post-quantum key exchange preferred ([`provider`]). The hub loads its certificate chain and key from PEM files
//! and can reload them while it runs, without touching the connections it
//! holds ([`ServerTls`]). Clients and agents verify the hub against the
//! system's root certificates, or against a CA file of their own
//! ([`TrustRoots`]); `muster dev --tls` makes such a CA and a certificate for
//! the loopback names ([`ensure_dev_certificate`]).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

mod client;
mod dev;
mod server;

pub use client::{CA_FILE_ENV, DialError, Stream, TrustRoots, dial};
pub use dev::{DevCertificate, ensure_dev_certificate, write_private};
pub use server::{ServerStream, ServerTls};

/// The crypto provider of every TLS configuration Muster builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
