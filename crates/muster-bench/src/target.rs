//! Which hubs the bench may load: loopback only.
//!
//! A load generator pointed at a shared hub is an outage, so the hub URL's host
//! must be `localhost` or a loopback address (`127.0.0.0/8`, `::1`) before any
//! connection is opened.

use std::net::IpAddr;

use anyhow::{Context, bail};

/// Fails unless `hub_url` names a loopback host.
pub(crate) fn ensure_loopback(hub_url: &str) -> anyhow::Result<()> {
    let host = host_of(hub_url)?;
    if is_loopback(host) {
        return Ok(());
    }
    bail!(
        "refusing to load hub {hub_url}: its host {host:?} is not loopback; \
         benchmarks target 127.0.0.0/8, ::1 or localhost only"
    )
}

/// The host part of `scheme://[user@]host[:port][/path]`, without IPv6 brackets.
fn host_of(hub_url: &str) -> anyhow::Result<&str> {
    let (_, rest) = hub_url
        .trim()
        .split_once("://")
        .with_context(|| format!("hub url {hub_url:?} has no scheme; use http://host:port"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .map(|(host, _)| host)
            .with_context(|| format!("hub url {hub_url:?} has an unclosed '['"))?,
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        bail!("hub url {hub_url:?} has no host");
    }
    Ok(host)
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        for url in [
            "http://127.0.0.1:7070",
            "http://127.1.2.3:1/prefix",
            "ws://localhost:9",
            "http://LOCALHOST",
            "http://[::1]:7070",
            "http://[::ffff:127.0.0.1]:7070",
            "http://user@127.0.0.1:1",
        ] {
            ensure_loopback(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn other_hosts_are_refused() {
        for url in [
            "http://10.0.0.1:7070",
            "http://hub.example:7070",
            "http://[2001:db8::1]:7070",
            "http://127.0.0.1.example.com",
            "http://localhost.evil:1",
            "http://0.0.0.0:7070",
        ] {
            let err = ensure_loopback(url).unwrap_err().to_string();
            assert!(err.contains("not loopback"), "{url}: {err}");
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in ["127.0.0.1:7070", "http://", "http://[::1"] {
            assert!(ensure_loopback(url).is_err(), "{url}");
        }
    }
}
