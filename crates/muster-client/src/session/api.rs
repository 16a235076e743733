//! One request each for the session messages, on one connection, with no
//! retrying: the building blocks [`Session`](super::Session) puts together.

use muster_proto::messages::{RunCreate, RunListQuery};
use muster_proto::sessions::{
    SessionAttach, SessionAttached, SessionInput, SessionInputAck, SessionRef, SessionResize,
    SessionScreen, SessionSnapshot,
};
use muster_proto::types::RunRequest;
use muster_proto::{ClientToHub, HubToClient, RunId, RunInfo};

use crate::RunAccepted;
use crate::api::expect_reply;
use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Opens a session: `run.create` with `request.session` set. Sessions
    /// are not queued: an offline agent is `AGENT_OFFLINE`, one with too many
    /// sessions `SESSION_LIMIT`. The session's id is the run's.
    pub async fn open_session(&self, request: RunRequest) -> Result<RunAccepted, ClientError> {
        if request.session.is_none() {
            return Err(ClientError::Protocol(
                "a session needs the request's session part".into(),
            ));
        }
        let request = ClientToHub::RunCreate(RunCreate {
            request,
            subscribe: false,
        });
        expect_reply!(self, request, "run.accepted", HubToClient::RunAccepted(accepted) => accepted)
    }

    /// Recent sessions, newest first (`run.list` with `session: true`), at
    /// most `limit` of them.
    pub async fn sessions(&self, limit: Option<u32>) -> Result<Vec<RunInfo>, ClientError> {
        let query = RunListQuery {
            session: Some(true),
            limit,
            ..RunListQuery::default()
        };
        self.runs(query).await
    }

    /// Attaches this connection to session `run`: as a viewer, or, with
    /// `writer` (the writer's own id, see
    /// [`check_writer_id`](muster_proto::sessions::check_writer_id)), as a
    /// writer, which needs an operator key. The reply's `last_seq` is the
    /// last input the hub took from that writer.
    pub async fn attach_session(
        &self,
        run: RunId,
        writer: Option<&str>,
    ) -> Result<SessionAttached, ClientError> {
        let request = ClientToHub::SessionAttach(SessionAttach {
            run,
            write: writer.is_some(),
            writer: writer.map(str::to_owned),
        });
        expect_reply!(self, request, "session.attached",
            HubToClient::SessionAttached(attached) => attached)
    }

    /// Detaches this connection from session `run`; a connection that ends is
    /// detached too.
    pub async fn detach_session(&self, run: RunId) -> Result<(), ClientError> {
        let request = ClientToHub::SessionDetach(SessionRef { run });
        expect_reply!(self, request, "ok", HubToClient::Ok(_) => ())
    }

    /// Sends one numbered input as it is; the reply says it is stored. A
    /// writer that must survive drops uses [`Session`](super::Session), which
    /// numbers and resends.
    pub async fn session_input(&self, input: SessionInput) -> Result<SessionInputAck, ClientError> {
        let request = ClientToHub::SessionInput(input);
        expect_reply!(self, request, "session.input.ack",
            HubToClient::SessionInputAck(ack) => ack)
    }

    /// Resizes a pty session's terminal (writers only).
    pub async fn resize_session(
        &self,
        run: RunId,
        cols: u16,
        rows: u16,
    ) -> Result<(), ClientError> {
        let request = ClientToHub::SessionResize(SessionResize { run, cols, rows });
        expect_reply!(self, request, "ok", HubToClient::Ok(_) => ())
    }

    /// A pty session's screen: paint `data` on a blank terminal, then follow
    /// `run:<id>` from `next_seq`.
    pub async fn session_snapshot(&self, run: RunId) -> Result<SessionScreen, ClientError> {
        let request = ClientToHub::SessionSnapshot(SessionSnapshot { run, token: None });
        expect_reply!(self, request, "session.screen",
            HubToClient::SessionScreen(screen) => screen)
    }
}
