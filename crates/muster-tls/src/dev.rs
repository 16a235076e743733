//! A certificate for `muster dev --tls`: a CA of its own, and a certificate
//! it signed for the loopback names.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The files of a development certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCertificate {
    /// The CA certificate clients trust (`MUSTER_CA_FILE`).
    pub ca: PathBuf,
    /// The hub's certificate chain.
    pub cert: PathBuf,
    /// The hub's private key (mode 0600).
    pub key: PathBuf,
}

/// The development certificate in `dir` (`tls-ca.pem`, `tls-cert.pem`,
/// `tls-key.pem`), made there first if any of them is missing. The CA's own
/// key is not kept: it signs this one certificate and is dropped.
pub fn ensure_dev_certificate(dir: &Path, names: &[String]) -> Result<DevCertificate, String> {
    let files = DevCertificate {
        ca: dir.join("tls-ca.pem"),
        cert: dir.join("tls-cert.pem"),
        key: dir.join("tls-key.pem"),
    };
    if [&files.ca, &files.cert, &files.key]
        .iter()
        .all(|p| p.is_file())
    {
        return Ok(files);
    }
    let failed = |e: rcgen::Error| format!("cannot make a development certificate: {e}");
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // Named after its key, so two development CAs never share a name.
    let id: String = ca_key
        .public_key_raw()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    ca.distinguished_name
        .push(DnType::CommonName, format!("Muster development CA {id}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

    let key = KeyPair::generate().map_err(failed)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(failed)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "Muster development hub");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;

    write_private(&files.key, &key.serialize_pem())?;
    write_private(&files.cert, &(cert.pem() + &ca_cert.pem()))?;
    write_private(&files.ca, &ca_cert.pem())?;
    Ok(files)
}

/// Writes `text` to `path`, mode 0600, whole or not at all: through a
/// temporary file that is synced, then renamed over `path`, and the
/// directory synced. Keys and credentials are written with it.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::{ServerTls, TrustRoots};

    #[test]
    fn a_dev_certificate_loads_is_private_and_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let files = ensure_dev_certificate(dir.path(), &names).unwrap();
        let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = ServerTls::load(&files.cert, &files.key).unwrap();
        server.reload().unwrap();
        TrustRoots::ca_file(&files.ca).client_config().unwrap();
        let first = fs::read(&files.cert).unwrap();
        ensure_dev_certificate(dir.path(), &names).unwrap();
        assert_eq!(fs::read(&files.cert).unwrap(), first, "made again");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_and_reload_keeps_the_old() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let one = ensure_dev_certificate(a.path(), &names).unwrap();
        let two = ensure_dev_certificate(b.path(), &names).unwrap();
        let err = ServerTls::load(&one.cert, &two.key)
            .err()
            .expect("mismatch refused");
        assert!(err.contains("does not belong"), "{err}");
        let server = ServerTls::load(&one.cert, &one.key).unwrap();
        fs::write(&one.key, "not a key").unwrap();
        let err = server.reload().expect_err("a broken key is refused");
        assert!(err.contains("cannot read a private key"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        fs::write(&path, "").unwrap();
        let err = TrustRoots::ca_file(&path).client_config().unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let err = TrustRoots::ca_file(dir.path().join("absent.pem"))
            .client_config()
            .unwrap_err();
        assert!(err.contains("cannot read the CA file"), "{err}");
    }
}
