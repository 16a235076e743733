//! Creating a run so that a dropped connection neither loses nor doubles it.
//!
//! `run.create` is safe to send twice only with an idempotency key: the hub
//! answers the second copy with the run the first one created. So
//! [`create_run_retrying`] makes sure the request has a key, and re-sends the
//! same request on a new connection whenever the connection drops before the
//! hub's `run.accepted` arrives.

use std::time::Duration;

use muster_proto::types::RunRequest;
use tokio::sync::mpsc;

use muster_proto::messages::{JobAccepted, JobCreate};

use crate::RunAccepted;
use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::reconnect::{ReconnectError, Reconnector};

/// A fresh idempotency key: 128 random bits as 32 lowercase hex digits.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Creates a run through `connection`, surviving drops of the connection.
///
/// If the connection drops before `run.accepted`, this reconnects to `hub_url`
/// with `token` (on the shared backoff schedule, one warning per attempt,
/// giving up after `give_up_after` without a successful `run.accepted`) and
/// sends the same request again. A request without an idempotency key gets one
/// from [`new_idempotency_key`] first, so however many copies reach the hub,
/// at most one run is created; `created` in the reply is false when the copy
/// that answered found the run an earlier copy created.
///
/// Returns the connection the run was accepted on — subscribed to the run when
/// `subscribe` is set — with its events and the reply. Errors other than a
/// dropped connection (the hub refusing the request, a rejected token) are
/// returned at once.
pub async fn create_run_retrying(
    connection: (Client, mpsc::Receiver<Event>),
    hub_url: &str,
    token: &str,
    mut request: RunRequest,
    subscribe: bool,
    give_up_after: Duration,
) -> Result<(Client, mpsc::Receiver<Event>, RunAccepted), ClientError> {
    request
        .idempotency_key
        .get_or_insert_with(new_idempotency_key);
    let retry = Retry {
        hub_url,
        token,
        give_up_after,
        what: "creating the run",
    };
    retry
        .send(connection, |client| {
            let request = request.clone();
            async move { client.create_run(request, subscribe).await }
        })
        .await
}

/// Creates a job through `connection`, surviving drops of the connection, as
/// [`create_run_retrying`] does for a run: the request gets an idempotency key
/// if it has none, and is sent again on a new connection until the hub
/// answers. When `created` is false in the reply, an earlier copy made the job
/// and it may be under way; `subscribe` then has no effect: subscribe to
/// `job:<id>` with `since` to replay its events.
pub async fn create_job_retrying(
    connection: (Client, mpsc::Receiver<Event>),
    hub_url: &str,
    token: &str,
    mut create: JobCreate,
    give_up_after: Duration,
) -> Result<(Client, mpsc::Receiver<Event>, JobAccepted), ClientError> {
    create
        .idempotency_key
        .get_or_insert_with(new_idempotency_key);
    let retry = Retry {
        hub_url,
        token,
        give_up_after,
        what: "creating the job",
    };
    retry
        .send(connection, |client| {
            let create = create.clone();
            async move { client.submit_job(create).await }
        })
        .await
}

/// Re-sends one idempotent request on new connections until the hub answers.
struct Retry<'a> {
    hub_url: &'a str,
    token: &'a str,
    give_up_after: Duration,
    what: &'static str,
}

impl Retry<'_> {
    async fn send<T, F>(
        &self,
        connection: (Client, mpsc::Receiver<Event>),
        mut request: impl FnMut(Client) -> F,
    ) -> Result<(Client, mpsc::Receiver<Event>, T), ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut reconnector = Reconnector::new(self.hub_url, self.token, self.give_up_after);
        let (mut client, mut events) = connection;
        loop {
            match request(client.clone()).await {
                Ok(reply) => return Ok((client, events, reply)),
                Err(ClientError::Closed(reason)) => {
                    (client, events) = reconnector
                        .reconnect(self.what, reason)
                        .await
                        .map_err(into_client_error)?;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// A failed reconnection as the error of the request it was for.
pub(crate) fn into_client_error(err: ReconnectError) -> ClientError {
    match err {
        ReconnectError::Fatal(err) => err,
        ReconnectError::GaveUp { waited, last_error } => ClientError::Connect(format!(
            "{last_error} (gave up after {}s)",
            waited.as_secs()
        )),
    }
}
