//! The long-running subcommands: `muster dev`, `muster hub` and `muster agent`.
//!
//! Each parses its flags, layers configuration (defaults, then the TOML file,
//! then `MUSTER_…` variables and flags, which clap merges; `muster agent`'s
//! file also declares its actions), wires signals to one
//! cancellation token, and hands over to the hub or agent library. Lines meant
//! for people and scripts (`MUSTER_HUB=…`, `MUSTER_TOKEN=…`) go to stdout;
//! logs go to stderr.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use muster_agent::{AgentConfig, AgentOptions, DEFAULT_MAX_CONCURRENCY};
use muster_hub::{Hub, HubConfig};
use muster_proto::AgentName;
use muster_proto::actions::ExecMode;
use muster_tls::TrustRoots;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Name of the agent `muster dev` runs in-process.
const DEV_AGENT: &str = "local";
/// How often the `muster dev` agent samples its host: often enough to watch.
const DEV_METRICS_INTERVAL: Duration = Duration::from_secs(5);
/// How long `muster dev` waits for its own agent before giving up.
const DEV_AGENT_READY: Duration = Duration::from_secs(15);
/// Where `muster agent` keeps its state unless told otherwise.
const DEFAULT_STATE_DIR: &str = ".muster-agent";

/// Flags shared by `muster dev` and `muster hub` that tune the hub.
#[derive(Debug, clap::Args)]
pub(crate) struct HubTuning {
    /// Interval between heartbeats (e.g. 30s).
    #[arg(long, env = "MUSTER_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Silence after which a connection is considered dead (e.g. 60s).
    #[arg(long, env = "MUSTER_HEARTBEAT_DEADLINE", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_deadline: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a run is cancelled or times out.
    #[arg(long, env = "MUSTER_KILL_GRACE", value_parser = humantime::parse_duration)]
    pub(crate) kill_grace: Option<Duration>,
    /// Output stored per run before it is marked truncated, in bytes.
    #[arg(long, env = "MUSTER_MAX_OUTPUT_BYTES")]
    pub(crate) max_output_bytes: Option<u64>,
    /// How long runs in flight wait for their departed agent before they end lost.
    #[arg(long, env = "MUSTER_LOST_GRACE", value_parser = humantime::parse_duration)]
    pub(crate) lost_grace: Option<Duration>,
    /// How long a run may wait to be dispatched before it ends expired.
    #[arg(long, env = "MUSTER_RUN_TTL", value_parser = humantime::parse_duration)]
    pub(crate) run_ttl: Option<Duration>,
    /// Sessions open at once on one agent [default: 32].
    #[arg(long, env = "MUSTER_MAX_SESSIONS_PER_AGENT")]
    pub(crate) max_sessions_per_agent: Option<usize>,
    /// A session idle this long (no input, no output) ends [default: 1h].
    #[arg(long, env = "MUSTER_SESSION_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) session_idle_timeout: Option<Duration>,
    /// Output a session keeps, in bytes; past it the oldest is dropped
    /// [default: 64 MiB].
    #[arg(long, env = "MUSTER_SESSION_SCROLLBACK")]
    pub(crate) session_scrollback: Option<u64>,
    /// A session ends this long after it started [default: 24h].
    #[arg(long, env = "MUSTER_SESSION_MAX_LIFETIME", value_parser = humantime::parse_duration)]
    pub(crate) session_max_lifetime: Option<Duration>,
    /// A browser origin (https://ops.example.com) that may open WebSockets
    /// besides the hub's own; repeatable, or comma-separated in the variable.
    #[arg(
        long = "allow-origin",
        env = "MUSTER_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) allowed_origins: Vec<String>,
    /// Time from accept for a connection to send its request, upgrade and
    /// have its `hello` accepted (e.g. 10s).
    #[arg(long, env = "MUSTER_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Option<Duration>,
    /// Connections not authenticated yet, at most; past it a newcomer ends
    /// the oldest of the source holding the most.
    #[arg(long, env = "MUSTER_MAX_UNAUTHENTICATED")]
    pub(crate) max_unauthenticated: Option<usize>,
    /// Connections not authenticated yet from one address (an IPv6 /64), at most.
    #[arg(long, env = "MUSTER_MAX_UNAUTHENTICATED_PER_SOURCE")]
    pub(crate) max_unauthenticated_per_source: Option<usize>,
    /// Messages a client connection may send per second; 0: no limit [default: 100].
    #[arg(long, env = "MUSTER_RATE_LIMIT_MESSAGES")]
    pub(crate) rate_limit_messages: Option<u32>,
    /// Command requests (run.create, job.create) per API key per minute; 0:
    /// no limit [default: 10].
    #[arg(long, env = "MUSTER_RATE_LIMIT_COMMANDS")]
    pub(crate) rate_limit_commands: Option<u32>,
    /// Failed authentications per source address per minute; 0: no limit
    /// [default: 30].
    #[arg(long, env = "MUSTER_RATE_LIMIT_AUTH_FAILURES")]
    pub(crate) rate_limit_auth_failures: Option<u32>,
}

impl HubTuning {
    fn apply(&self, config: &mut HubConfig) {
        if let Some(d) = self.heartbeat_interval {
            config.heartbeat_interval_ms = d.as_millis() as u64;
        }
        if let Some(d) = self.heartbeat_deadline {
            config.heartbeat_deadline_ms = d.as_millis() as u64;
        }
        if let Some(d) = self.kill_grace {
            config.kill_grace_ms = d.as_millis() as u64;
        }
        if let Some(n) = self.max_output_bytes {
            config.max_output_bytes_per_run = n;
        }
        if let Some(d) = self.lost_grace {
            config.lost_grace_ms = d.as_millis() as u64;
        }
        if let Some(d) = self.run_ttl {
            config.default_run_ttl_ms = d.as_millis() as u64;
        }
        if let Some(n) = self.max_sessions_per_agent {
            config.max_sessions_per_agent = n;
        }
        if let Some(d) = self.session_idle_timeout {
            config.session_idle_timeout_ms = d.as_millis() as u64;
        }
        if let Some(n) = self.session_scrollback {
            config.session_scrollback_bytes = n;
        }
        if let Some(d) = self.session_max_lifetime {
            config.session_max_lifetime_ms = d.as_millis() as u64;
        }
        config
            .allowed_origins
            .extend(self.allowed_origins.iter().cloned());
        if let Some(d) = self.handshake_timeout {
            config.handshake_timeout_ms = d.as_millis() as u64;
        }
        if let Some(n) = self.max_unauthenticated {
            config.max_unauthenticated = n;
        }
        if let Some(n) = self.max_unauthenticated_per_source {
            config.max_unauthenticated_per_source = n;
        }
        if let Some(n) = self.rate_limit_messages {
            config.rate_messages_per_sec = n;
        }
        if let Some(n) = self.rate_limit_commands {
            config.rate_commands_per_min = n;
        }
        if let Some(n) = self.rate_limit_auth_failures {
            config.rate_auth_failures_per_min = n;
        }
    }
}

/// Arguments of `muster dev`.
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Address to listen on.
    #[arg(long, env = "MUSTER_LISTEN", default_value = "127.0.0.1:7070")]
    pub(crate) listen: String,
    /// Directory for the database and state.
    #[arg(long, env = "MUSTER_DATA_DIR", default_value = ".muster-dev")]
    pub(crate) data_dir: PathBuf,
    /// Serve https:// with a certificate made in the data dir, signed by a
    /// CA of its own whose file is printed as MUSTER_CA_FILE.
    #[arg(long)]
    pub(crate) tls: bool,
    #[command(flatten)]
    pub(crate) tuning: HubTuning,
}

/// Arguments of `muster hub`.
#[derive(Debug, clap::Args)]
pub(crate) struct HubArgs {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "MUSTER_LISTEN")]
    pub(crate) listen: Option<String>,
    /// Directory for the database [default: muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// TOML configuration file; flags and MUSTER_… variables override it.
    #[arg(long, env = "MUSTER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// PEM certificate chain: the hub then serves https:// (with --tls-key).
    /// SIGHUP reloads it and the key.
    #[arg(long, env = "MUSTER_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MUSTER_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tuning: HubTuning,
}

/// Arguments of `muster agent`.
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    /// Hub base URL (http://host:port).
    #[arg(long, env = "MUSTER_HUB")]
    pub(crate) hub: String,
    /// The agent's token, as printed by `muster agents add`. On a command
    /// line `ps` shows it: prefer --token-file or the variable.
    #[arg(
        long,
        env = "MUSTER_AGENT_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub(crate) token: Option<String>,
    /// A file that holds the agent's token (keep it mode 0600).
    #[arg(long, env = "MUSTER_AGENT_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// An enrollment token, as printed by `muster enroll create`: with no
    /// credential in the state dir yet, the agent registers itself with it
    /// (under --name, else the host name) and keeps the credential it gets
    /// there; with one, it is ignored. On a command line `ps` shows it:
    /// prefer the variable.
    #[arg(
        long,
        env = "MUSTER_ENROLL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with_all = ["token", "token_file"]
    )]
    pub(crate) enroll: Option<String>,
    /// PEM file of the CA certificates that verify an https:// hub, instead
    /// of the system's roots.
    #[arg(long, env = "MUSTER_CA_FILE", value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// TOML configuration file: name, labels, state_dir, max_concurrency, exec
    /// and [actions.NAME]; flags and MUSTER_… variables override it.
    #[arg(long, env = "MUSTER_AGENT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The agent's name; must match the token's agent. When enrolling, the
    /// name to register under [default: the host name].
    #[arg(long, env = "MUSTER_AGENT_NAME")]
    pub(crate) name: Option<AgentName>,
    /// A label, k=v; repeatable. Merged over the config file's labels, and
    /// overrides a registered label with the same key.
    #[arg(long = "label", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// Directory for the agent's state (the ledger of runs it started, and
    /// the credential the hub hands over) [default: .muster-agent].
    #[arg(long, env = "MUSTER_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// How often to sample and report host metrics (e.g. 30s); 0 turns it off.
    #[arg(long, env = "MUSTER_METRICS_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) metrics_interval: Duration,
    /// How many runs execute at once, at least 1 [default: 4].
    #[arg(long, env = "MUSTER_MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_concurrency: Option<u32>,
}

impl AgentArgs {
    /// The agent's options: the config file (if any), then the flags over it.
    /// A config file that cannot be read or is invalid is an error.
    fn into_options(self) -> anyhow::Result<AgentOptions> {
        // None given is fine when the state dir holds a credential, or with
        // an enrollment token.
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        let file = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        let mut labels = file.labels;
        labels.extend(self.labels);
        let max_concurrency = self
            .max_concurrency
            .or(file.max_concurrency)
            .unwrap_or(DEFAULT_MAX_CONCURRENCY);
        let state_dir = self
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let metrics = self.metrics_interval;
        Ok(AgentOptions {
            name: self.name.or(file.name),
            labels,
            max_concurrency,
            state_dir: Some(state_dir),
            metrics_interval: (!metrics.is_zero()).then_some(metrics),
            exec: file.exec,
            actions: file.actions,
            trust: match self.ca_file {
                Some(path) => TrustRoots::ca_file(path),
                None => TrustRoots::system(),
            },
            enroll: self.enroll.filter(|token| !token.is_empty()),
            ..AgentOptions::new(self.hub, token)
        })
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected k=v, got {s:?}")),
    }
}

/// Connections the kernel queues before the hub accepts them: enough for a
/// fleet reconnecting at once (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Runs `muster dev`: a hub, an in-process agent named `local`, until Ctrl-C.
pub(crate) async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut config = HubConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        ..HubConfig::default()
    };
    args.tuning.apply(&mut config);
    let dev_tls = match args.tls {
        true => Some(dev_certificate(&config)?),
        false => None,
    };
    if let Some(files) = &dev_tls {
        config.tls_cert = Some(files.cert.clone());
        config.tls_key = Some(files.key.clone());
    }
    let hub = Hub::open(config).await?.hub;
    let admin_token = hub.mint_admin_key("dev", true).await?;
    let local = AgentName::new(DEV_AGENT)?;
    let agent_token = hub.agent_token(&local).await?;
    let (listener, url) = bind(&hub.config().listen, hub.serves_tls()).await?;
    let shutdown = shutdown_on_signal();
    reload_tls_on_sighup(&hub);
    let server = tokio::spawn({
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        async move { hub.serve(listener, shutdown).await }
    });
    let agent_options = AgentOptions {
        name: Some(local.clone()),
        labels: BTreeMap::from([("env".to_owned(), "dev".to_owned())]),
        kill_grace: Duration::from_millis(hub.config().kill_grace_ms),
        state_dir: Some(hub.config().data_dir.join("agent-local")),
        metrics_interval: Some(DEV_METRICS_INTERVAL),
        trust: match &dev_tls {
            Some(files) => TrustRoots::ca_file(&files.ca),
            None => TrustRoots::system(),
        },
        ..AgentOptions::new(url.clone(), agent_token.expose().to_owned())
    };
    let agent = tokio::spawn(muster_agent::run(agent_options, shutdown.clone()));
    tokio::time::timeout(DEV_AGENT_READY, hub.wait_online(&local))
        .await
        .context("the local agent did not come online")?;
    println!("MUSTER_HUB={url}");
    println!("MUSTER_TOKEN={}", admin_token.expose());
    if let Some(files) = &dev_tls {
        println!("MUSTER_CA_FILE={}", files.ca.display());
    }
    println!(
        "# agent \"{DEV_AGENT}\" is online. In another terminal: export the lines above, then: muster run {DEV_AGENT} -- uname -a"
    );
    std::io::stdout().flush()?;
    let served = server.await.context("hub task panicked")?;
    if let Ok(Err(e)) = agent.await {
        tracing::warn!(error = %format!("{e:#}"), "local agent stopped with an error");
    }
    hub.close().await;
    served.map(|()| ExitCode::SUCCESS)
}

/// Runs `muster hub` until SIGINT or SIGTERM.
pub(crate) async fn hub(args: HubArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => HubConfig::from_file(path)?,
        None => HubConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    }
    args.tuning.apply(&mut config);
    let opened = Hub::open(config).await?;
    let (listener, url) = bind(&opened.hub.config().listen, opened.hub.serves_tls()).await?;
    reload_tls_on_sighup(&opened.hub);
    println!("MUSTER_HUB={url}");
    if let Some(token) = &opened.initial_admin_token {
        println!("MUSTER_TOKEN={}", token.expose());
        println!("# this admin token is shown only once; store it now");
    }
    std::io::stdout().flush()?;
    tracing::info!(%url, data_dir = %opened.hub.config().data_dir.display(), "hub listening");
    opened.hub.serve(listener, shutdown_on_signal()).await?;
    opened.hub.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Runs `muster agent` until SIGINT or SIGTERM, or until the hub rejects its token.
pub(crate) async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let options = args.into_options()?;
    if let Some(dir) = &options.state_dir {
        muster_agent::state_dir::create(dir)?;
    }
    if !options.actions.is_empty() || options.exec != ExecMode::Any {
        let actions: Vec<_> = options.actions.names().collect();
        tracing::info!(exec = options.exec.as_str(), ?actions, "declared actions");
    }
    muster_agent::run(options, shutdown_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The development certificate in the data dir (made there, the dir too,
/// if missing), for the loopback names and the listen host.
fn dev_certificate(config: &HubConfig) -> anyhow::Result<muster_tls::DevCertificate> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some((host, _port)) = config.listen.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let unspecified = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !host.is_empty() && !unspecified && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    muster_tls::ensure_dev_certificate(&config.data_dir, &names).map_err(|e| anyhow::anyhow!(e))
}

/// Reloads the hub's TLS certificate and key on every SIGHUP.
fn reload_tls_on_sighup(hub: &Hub) {
    if !hub.serves_tls() {
        return;
    }
    let hub = hub.clone();
    tokio::spawn(async move {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the TLS certificate will not reload");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match hub.reload_tls() {
                Some(Ok(())) => tracing::info!("reloaded the TLS certificate and key"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot reload the TLS certificate; keeping the one in use");
                }
                None => {}
            }
        }
    });
}

async fn bind(listen: &str, tls: bool) -> anyhow::Result<(TcpListener, String)> {
    let addr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("cannot resolve {listen}"))?
        .next()
        .with_context(|| format!("{listen} resolves to no address"))?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let scheme = if tls { "https" } else { "http" };
    Ok((listener, format!("{scheme}://{addr}")))
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(config: Option<PathBuf>) -> AgentArgs {
        AgentArgs {
            hub: "http://hub:7070".into(),
            token: Some("mst_test".into()),
            token_file: None,
            enroll: None,
            ca_file: None,
            config,
            name: None,
            labels: Vec::new(),
            state_dir: None,
            metrics_interval: Duration::ZERO,
            max_concurrency: None,
        }
    }

    fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const CONFIG: &str = r#"
        name = "from-file"
        state_dir = "/var/lib/from-file"
        max_concurrency = 7
        exec = "actions-only"
        [labels]
        role = "web"
        zone = "a"
        [actions.reload]
        argv = ["/usr/sbin/nginx", "-s", "reload"]
    "#;

    #[test]
    fn without_a_config_file_the_defaults_apply() {
        let options = args(None).into_options().unwrap();
        assert_eq!(options.state_dir.unwrap(), Path::new(DEFAULT_STATE_DIR));
        assert_eq!(options.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(options.exec, ExecMode::Any);
        assert!(options.actions.is_empty() && options.name.is_none());
        assert_eq!(options.metrics_interval, None);
    }

    #[test]
    fn the_config_file_fills_what_flags_do_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let options = args(Some(write_config(&dir, CONFIG)))
            .into_options()
            .unwrap();
        assert_eq!(options.name.unwrap().as_str(), "from-file");
        assert_eq!(options.state_dir.unwrap(), Path::new("/var/lib/from-file"));
        assert_eq!(options.max_concurrency, 7);
        assert_eq!(options.exec, ExecMode::ActionsOnly);
        assert_eq!(options.actions.names().collect::<Vec<_>>(), ["reload"]);
        assert_eq!(options.labels.len(), 2);
    }

    #[test]
    fn flags_win_over_the_config_file_and_labels_merge() {
        let dir = tempfile::tempdir().unwrap();
        let options = AgentArgs {
            name: Some(AgentName::new("from-flag").unwrap()),
            labels: vec![("zone".into(), "b".into()), ("tier".into(), "1".into())],
            state_dir: Some(PathBuf::from("flag-dir")),
            max_concurrency: Some(2),
            ..args(Some(write_config(&dir, CONFIG)))
        }
        .into_options()
        .unwrap();
        assert_eq!(options.name.unwrap().as_str(), "from-flag");
        assert_eq!(options.state_dir.unwrap(), Path::new("flag-dir"));
        assert_eq!(options.max_concurrency, 2);
        let labels: Vec<_> = options
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(labels, ["role=web", "tier=1", "zone=b"]);
    }

    #[test]
    fn an_invalid_config_file_is_a_one_line_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(&dir, "[actions.x]\nargv = [\"rel/prog\"]\n");
        let error = format!("{:#}", args(Some(path.clone())).into_options().unwrap_err());
        let expected = format!(
            "config file {}: action \"x\": argv[0] \"rel/prog\" must be an absolute path or a bare program name",
            path.display()
        );
        assert_eq!(error, expected);
        let missing = dir.path().join("missing.toml");
        let error = format!(
            "{:#}",
            args(Some(missing.clone())).into_options().unwrap_err()
        );
        assert!(error.starts_with(&format!("cannot read config file {}", missing.display())));
        assert!(!error.contains('\n'), "{error}");
    }
}
