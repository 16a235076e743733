//! `TestHub`: a hub on a free loopback port with a temporary data dir,
//! shut down when dropped, plus helpers to start agents and clients.

use std::sync::Arc;
use std::time::Duration;

use muster_agent::AgentOptions;
use muster_client::{Client, Event};
use muster_hub::{Hub, HubConfig, InProcessBroker, Store};
use muster_proto::{AgentName, HubToClient, JobId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a test waits for anything before failing.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) struct TestHub {
    pub(crate) hub: Hub,
    pub(crate) url: String,
    pub(crate) admin_token: String,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl TestHub {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tune: impl FnOnce(&mut HubConfig)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = HubConfig {
            data_dir: data.path().to_owned(),
            ..HubConfig::default()
        };
        tune(&mut config);
        let opened = Hub::open(config).await.unwrap();
        Self::serve(opened, data).await
    }

    /// A hub over `store`, which keeps its data in `data`.
    pub(crate) async fn start_on_store(store: Arc<dyn Store>, data: tempfile::TempDir) -> Self {
        let config = HubConfig {
            data_dir: data.path().to_owned(),
            ..HubConfig::default()
        };
        let broker = Arc::new(InProcessBroker::new());
        let opened = Hub::with_parts(config, store, broker).await.unwrap();
        Self::serve(opened, data).await
    }

    /// A hub on an existing data dir, with a fresh admin key.
    pub(crate) async fn start_in(data: tempfile::TempDir) -> Self {
        let config = HubConfig {
            data_dir: data.path().to_owned(),
            ..HubConfig::default()
        };
        let mut opened = Hub::open(config).await.unwrap();
        if opened.initial_admin_token.is_none() {
            let token = opened.hub.mint_admin_key("test", false).await.unwrap();
            opened.initial_admin_token = Some(token);
        }
        Self::serve(opened, data).await
    }

    async fn serve(opened: muster_hub::Opened, data: tempfile::TempDir) -> Self {
        let admin_token = opened.initial_admin_token.unwrap().expose().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let hub = opened.hub;
        tokio::spawn({
            let (hub, shutdown) = (hub.clone(), shutdown.clone());
            async move { hub.serve(listener, shutdown).await.unwrap() }
        });
        Self {
            hub,
            url,
            admin_token,
            shutdown,
            _data: data,
        }
    }

    /// Starts an in-process agent and waits until the hub sees it online.
    pub(crate) async fn agent(&self, name: &str, max_concurrency: u32) -> CancellationToken {
        self.agent_with_metrics(name, max_concurrency, None).await
    }

    /// An agent that samples its host every `metrics_interval`.
    pub(crate) async fn agent_with_metrics(
        &self,
        name: &str,
        max_concurrency: u32,
        metrics_interval: Option<Duration>,
    ) -> CancellationToken {
        self.agent_with(name, |options| {
            options.max_concurrency = max_concurrency;
            options.metrics_interval = metrics_interval;
        })
        .await
    }

    /// An agent with `labels`, running one command at a time.
    pub(crate) async fn labeled_agent(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> CancellationToken {
        self.agent_with(name, |options| {
            options.labels = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        })
        .await
    }

    /// An in-process agent with options adjusted by `tune`, once it is online.
    pub(crate) async fn agent_with(
        &self,
        name: &str,
        tune: impl FnOnce(&mut AgentOptions),
    ) -> CancellationToken {
        let name = AgentName::new(name).unwrap();
        let token = self.hub.agent_token(&name).await.unwrap();
        let mut options = AgentOptions {
            name: Some(name.clone()),
            kill_grace: Duration::from_secs(2),
            state_dir: Some(self.data_dir().join(format!("agent-{name}"))),
            ..AgentOptions::new(self.url.clone(), token.expose().to_owned())
        };
        tune(&mut options);
        let stop = CancellationToken::new();
        tokio::spawn(muster_agent::run(options, stop.clone()));
        tokio::time::timeout(WAIT, self.hub.wait_online(&name))
            .await
            .expect("agent online");
        stop
    }

    pub(crate) async fn client(&self) -> (Client, mpsc::Receiver<Event>) {
        Client::connect(&self.url, &self.admin_token)
            .await
            .expect("client connects")
    }

    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.url.replacen("http://", "ws://", 1))
    }

    /// The HTTP status of `GET path`.
    pub(crate) async fn http_status(&self, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.url.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("an HTTP status line")
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads events until some run's terminal `run.status`; returns that run and
/// the output payload bytes received on the way.
pub(crate) async fn until_run_ends(
    events: &mut mpsc::Receiver<Event>,
) -> (muster_proto::RunInfo, usize) {
    let mut received = 0;
    let finished = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events open") {
                Event::Output(frame) => received += frame.payload.len(),
                Event::Message(env) => match env.msg {
                    muster_proto::HubToClient::RunStatus(s) if s.run.state.is_terminal() => {
                        return s.run;
                    }
                    _ => {}
                },
                Event::Closed { reason, .. } => panic!("the client was closed: {reason}"),
            }
        }
    })
    .await
    .expect("the run ends");
    (finished, received)
}

/// Every message on `job:<id>` until its final `job.progress`, in arrival order.
pub(crate) async fn job_events(events: &mut mpsc::Receiver<Event>, job: JobId) -> Vec<HubToClient> {
    let channel = job.channel().to_string();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events open") {
                Event::Message(env) if env.channel.as_deref() == Some(channel.as_str()) => {
                    let last =
                        matches!(&env.msg, HubToClient::JobProgress(p) if p.state.is_terminal());
                    seen.push(env.msg);
                    if last {
                        return;
                    }
                }
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the job ends");
    seen
}

/// The `seq` of a job event.
pub(crate) fn seq_of(msg: &HubToClient) -> u64 {
    match msg {
        HubToClient::JobProgress(e) => e.seq,
        HubToClient::JobStepStarted(e) => e.seq,
        HubToClient::JobStepProgress(e) => e.seq,
        HubToClient::JobStepCompleted(e) | HubToClient::JobStepFailed(e) => e.seq,
        HubToClient::JobTarget(e) => e.seq,
        other => panic!("not a job event: {other:?}"),
    }
}
