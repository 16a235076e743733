//! The client side: which certificates to trust, and dialing a hub's
//! WebSocket over TCP or TLS.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

/// The environment variable naming a CA file to trust, as `--ca-file` does.
pub const CA_FILE_ENV: &str = "MUSTER_CA_FILE";

/// The certificates a client or an agent trusts to verify the hub.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustRoots {
    /// A PEM file of CA certificates trusted instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl TrustRoots {
    /// The system's root certificates.
    pub fn system() -> Self {
        Self::default()
    }

    /// The CA certificates in `path` (PEM), and nothing else.
    pub fn ca_file(path: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: Some(path.into()),
        }
    }

    /// [`CA_FILE_ENV`] when it is set and not empty, else the system's roots.
    pub fn from_env() -> Self {
        match std::env::var_os(CA_FILE_ENV) {
            Some(path) if !path.is_empty() => Self::ca_file(path),
            _ => Self::system(),
        }
    }

    /// A TLS client configuration that trusts these roots. Read anew on
    /// every call, so a CA file replaced on disk applies to the next dial.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read the CA file {shown}: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("the CA file {shown} holds no PEM certificate"));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        format!("the CA file {shown} holds an unusable certificate: {e}")
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _unusable) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!(
                        "no system root certificates were found; give the hub's CA with --ca-file or {CA_FILE_ENV}"
                    ));
                }
            }
        }
        let config = ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Why a dial failed.
#[derive(Debug)]
pub enum DialError {
    /// The URL, or the trust configuration, cannot be used; retrying will
    /// not help until it is fixed.
    Config(String),
    /// The TLS handshake failed: the hub's certificate is not trusted, say.
    Tls(String),
    /// The TCP connection or the WebSocket handshake failed.
    WebSocket(tungstenite::Error),
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(why) | Self::Tls(why) => f.write_str(why),
            Self::WebSocket(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DialError {}

/// Opens a WebSocket to `url` (`ws://` or `wss://`): TCP without Nagle, then
/// TLS verified against `roots` for `wss://`, then the upgrade.
pub async fn dial(
    url: &str,
    roots: &TrustRoots,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<Stream>, Response), DialError> {
    let request = url.into_client_request().map_err(DialError::WebSocket)?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(DialError::Config(format!(
                "{url}: the scheme must be ws or wss"
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| DialError::Config(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // Before any connection, so a bad CA file fails as such, not as a timeout.
    let client_config = if tls {
        Some(roots.client_config().map_err(DialError::Config)?)
    } else {
        None
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| DialError::WebSocket(tungstenite::Error::Io(e)))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let stream = match client_config {
        None => Stream::Plain(tcp),
        Some(client_config) => {
            let name = ServerName::try_from(host.clone()).map_err(|_| {
                DialError::Config(format!("{host:?} is not a valid TLS server name"))
            })?;
            let tls = TlsConnector::from(client_config)
                .connect(name, tcp)
                .await
                .map_err(|e| DialError::Tls(explain(&host, &e)))?;
            Stream::Tls(Box::new(tls))
        }
    };
    tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(DialError::WebSocket)
}

/// One line on a failed TLS handshake with `host`, saying what to do.
fn explain(host: &str, e: &io::Error) -> String {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let fix = format!("give the hub's CA with --ca-file or {CA_FILE_ENV}");
    match rustls_error {
        // A CA of the same name that did not sign it reads as a bad signature.
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => {
            format!("the hub's TLS certificate is not signed by a trusted CA; {fix}")
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("the hub's TLS certificate is not valid for {host}"),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the hub's TLS certificate has expired".to_owned(),
        Some(rustls::Error::InvalidCertificate(other)) => {
            format!("the hub's TLS certificate was refused: {other:?}")
        }
        Some(rustls::Error::InvalidMessage(_)) => {
            "the hub did not answer in TLS (is it serving plain http://?)".to_owned()
        }
        Some(other) => format!("the TLS handshake with the hub failed: {other}"),
        None => format!("the TLS handshake with the hub failed: {e}"),
    }
}

/// A connection to the hub: plain TCP, or TLS over TCP.
pub enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
