//! TLS end to end: `muster dev --tls` as the README gives it, a hub with its
//! own certificate reached by an agent and a client that trust its CA, a
//! wrong CA refused with a clear message, and a certificate reloaded on
//! SIGHUP without dropping the connections that were open.

use std::path::Path;

use nix::sys::signal::{Signal, kill};

use crate::fixture::{Server, path_in, tempdir};

/// Makes a CA and a certificate it signed for 127.0.0.1 in `dir`.
fn certificate(dir: &Path) -> muster_tls::DevCertificate {
    std::fs::create_dir_all(dir).unwrap();
    let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    muster_tls::ensure_dev_certificate(dir, &names).expect("a test certificate")
}

#[test]
fn dev_tls_serves_https_and_its_ca_file_is_all_a_client_needs() {
    let dir = tempdir();
    let dev = Server::dev_tls(dir.path());
    assert!(dev.hub.starts_with("https://127.0.0.1:"), "{}", dev.hub);
    let ca = dev.ca_file.clone().expect("MUSTER_CA_FILE is printed");
    let cli = dev.cli(dev.token.as_deref().unwrap());

    let out = cli
        .command(&["run", "local", "--", "echo", "over tls"])
        .env("MUSTER_CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n");

    // Without the CA, the system's roots do not know this hub.
    let out = cli.output(&["agents", "list"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not signed by a trusted CA") && stderr.contains("--ca-file"),
        "{stderr}"
    );
}

#[test]
fn a_hub_with_its_certificate_serves_agents_and_clients_that_trust_its_ca() {
    let dir = tempdir();
    let cert = certificate(&path_in(&dir, "pki"));
    let other = certificate(&path_in(&dir, "other-pki"));
    let hub = Server::hub_with(
        &path_in(&dir, "hub"),
        true,
        &[
            "--tls-cert",
            cert.cert.to_str().unwrap(),
            "--tls-key",
            cert.key.to_str().unwrap(),
        ],
    );
    assert!(hub.hub.starts_with("https://"), "{}", hub.hub);
    let admin = hub.token.clone().unwrap();
    let cli = hub.cli(&admin);
    let ca = cert.ca.to_str().unwrap();
    let added = cli
        .command(&["agents", "add", "web-1", "--json", "--ca-file", ca])
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let added: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    let agent_token = added["token"].as_str().unwrap().to_owned();
    let _agent = Server::agent(
        &hub.hub,
        &agent_token,
        "web-1",
        &path_in(&dir, "state"),
        &["--ca-file", ca],
    );
    let with_ca = |args: &[&str]| {
        cli.command(args)
            .env("MUSTER_CA_FILE", &cert.ca)
            .output()
            .unwrap()
    };
    let online = || {
        let out = with_ca(&["agents", "show", "web-1", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["status"] == "online")
    };
    let deadline = std::time::Instant::now() + crate::fixture::READY;
    while !online() {
        assert!(
            std::time::Instant::now() < deadline,
            "web-1 never came online"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = with_ca(&["run", "web-1", "--", "echo", "verified"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "verified\n");

    // Another CA is refused, by name, with what to do.
    let out = cli
        .command(&["agents", "list", "--ca-file", other.ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not signed by a trusted CA"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A CA file that is not one is refused as such.
    let out = cli
        .command(&["agents", "list", "--ca-file", cert.key.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");

    // SIGHUP swaps in the other certificate: new connections get it, and the
    // agent's open connection carries on.
    std::fs::copy(&other.cert, &cert.cert).unwrap();
    std::fs::copy(&other.key, &cert.key).unwrap();
    kill(hub.pid(), Signal::SIGHUP).unwrap();
    let reloaded = || {
        cli.command(&["agents", "list", "--ca-file", other.ca.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success()
    };
    let deadline = std::time::Instant::now() + crate::fixture::READY;
    while !reloaded() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = cli
        .command(&["run", "web-1", "--", "echo", "still here"])
        .env("MUSTER_CA_FILE", &other.ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    let out = with_ca(&["agents", "list"]);
    assert_eq!(
        out.status.code(),
        Some(255),
        "the old CA no longer verifies"
    );
}
