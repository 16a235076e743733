//! The hub's side: its certificate, reloadable, and its connections, whose
//! TLS handshakes run on their own tasks.

use std::future::Future as _;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{Accept, TlsAcceptor};

/// The hub's certificate chain and key, from PEM files, and the acceptor
/// that serves them. [`ServerTls::reload`] swaps in what the files hold now;
/// handshakes after it use the new certificate, connections already open
/// keep theirs.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

/// The certificate handshakes get.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock poisoned").clone())
    }
}

impl ServerTls {
    /// Loads the chain in `cert` and the key in `key` (PEM, PKCS#8, PKCS#1 or
    /// SEC1), checking that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(cert, key)?))));
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.cert, &self.key)?;
        *self.current.0.write().expect("certificate lock poisoned") = Arc::new(fresh);
        Ok(())
    }

    /// The connection `tcp`, whose handshake runs when it is first read or
    /// written.
    pub fn accept(&self, tcp: TcpStream) -> ServerStream {
        ServerStream::Handshaking(Box::new(self.acceptor.accept(tcp)))
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let (cert_shown, key_shown) = (cert.display(), key.display());
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate file {cert_shown}: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "the certificate file {cert_shown} holds no PEM certificate"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {key_shown}: {e}"))?;
    let signing_key = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the key in {key_shown} cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        format!("the key in {key_shown} does not belong to the certificate in {cert_shown}: {e}")
    })?;
    Ok(certified)
}

/// A connection the hub accepted: plain TCP, or TLS whose handshake is
/// driven by the first read or write.
pub enum ServerStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, handshake under way.
    Handshaking(Box<Accept<TcpStream>>),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed; every read and write fails.
    Failed,
}

impl ServerStream {
    /// The TCP connection under it, if the handshake has not failed.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(tcp) => Some(tcp),
            Self::Handshaking(accept) => accept.get_ref(),
            Self::Tls(tls) => Some(tls.get_ref().0),
            Self::Failed => None,
        }
    }

    /// Drives the handshake; `Ready(Ok)` once the stream can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Self::Handshaking(accept) = self else {
            return Poll::Ready(match self {
                Self::Failed => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS handshake failed",
                )),
                _ => Ok(()),
            });
        };
        match ready!(Pin::new(accept.as_mut()).poll(cx)) {
            Ok(tls) => {
                *self = Self::Tls(Box::new(tls));
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                *self = Self::Failed;
                Poll::Ready(Err(e))
            }
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Self::Handshaking(_) | Self::Failed => unreachable!("poll_ready settled the state"),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Self::Handshaking(_) | Self::Failed => unreachable!("poll_ready settled the state"),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Self::Handshaking(_) | Self::Failed => unreachable!("poll_ready settled the state"),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
            Self::Handshaking(_) | Self::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Self::Handshaking(_) | Self::Failed => unreachable!("poll_ready settled the state"),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Self::Handshaking(_) | Self::Failed => Poll::Ready(Ok(())),
        }
    }
}
