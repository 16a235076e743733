//! Sessions: attach to a pty or pipe session, follow its output, and write
//! to it with every input applied exactly once across dropped connections.
//!
//! The one-request methods on [`Client`] (`open_session`, `attach_session`,
//! `session_input`, `resize_session`, `session_snapshot`, `detach_session`,
//! `sessions`) are in `api.rs`. [`Session`] is what survives drops. It holds
//! two connections, each with its own reconnect loop:
//!
//! - the **attachment**, on which it is attached as a viewer or a writer and
//!   sends inputs and resizes. A writer numbers its inputs from the first
//!   attach's `last_seq` + 1 and keeps each until the hub acknowledges it;
//!   after a reconnect it attaches again with the same writer id and sends
//!   again exactly the inputs above the new `last_seq` (the rules, with no
//!   socket, are in `inputs.rs`);
//! - the **output**, a [`RunFollower`] on `run:<id>` from a chosen `seq` (or
//!   from a snapshot of the screen), which resumes by offset.
//!
//! Keeping them apart lets a writer that only sends (`muster sessions send`)
//! do without the output, and leaves following output to the one type that
//! already does it. Output frames are marked `replayed` while a
//! subscription's replay runs (from its start, or from a reconnect, until
//! `stream.synced`): a terminal must not answer queries found in history.

mod api;
mod inputs;
mod task;

use std::time::Duration;

use muster_proto::sessions::{
    InputRecord, MAX_SESSION_INPUT_BYTES, SessionAttached, SessionKind, SessionScreen,
    check_writer_id,
};
use muster_proto::{OutputFrame, RunId, RunInfo};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::follow::{FollowError, FollowOptions, RunFollower};
use crate::reconnect::{DEFAULT_GIVE_UP_AFTER, Reconnector};

pub use inputs::InputLogError;
use task::{Command, SessionTask};

/// Capacity of the channel from a session's task to its handle; a consumer
/// that cannot keep up slows the output follower down, as with
/// [`RunFollower`].
const SESSION_EVENT_CAPACITY: usize = 64;

/// Capacity of the channel from the handle to the task: inputs and resizes
/// waiting to be numbered.
const COMMAND_CAPACITY: usize = 64;

/// Most inputs a writer keeps unacknowledged; past it,
/// [`Session::input`] waits, so a hub that is away for long costs a bounded
/// amount of memory (at most 8 MiB).
pub const MAX_UNACKED_INPUTS: usize = 1024;

/// How a [`Session`] follows the session's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Not at all: an attachment that only sends.
    No,
    /// From this output `seq` (0: everything so far, then live).
    From(u64),
    /// From a snapshot of the screen taken right after the first attach
    /// (pty sessions): paint [`Attached::screen`], then the output follows
    /// from its `next_seq`.
    Snapshot,
}

/// How to attach.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Attach as a writer with this id (see [`new_writer_id`]); a viewer
    /// when `None`. Keep the id to resume the same writer later.
    pub writer: Option<String>,
    /// Which output to follow.
    pub follow: Follow,
    /// Give up after this long without a working connection.
    pub give_up_after: Duration,
}

impl SessionOptions {
    /// A viewer following the output from `follow`.
    pub fn viewer(follow: Follow) -> Self {
        Self {
            writer: None,
            follow,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }

    /// A writer with `writer` as its id, following the output from `follow`.
    pub fn writer(writer: String, follow: Follow) -> Self {
        Self {
            writer: Some(writer),
            ..Self::viewer(follow)
        }
    }
}

/// A fresh writer id: `w-` and 24 random hex digits.
pub fn new_writer_id() -> String {
    format!("w-{:024x}", rand::random::<u128>() >> 32)
}

/// What [`Session::attach`] returns.
#[derive(Debug)]
pub struct Attached {
    /// The session, attached and following.
    pub session: Session,
    /// The hub's answer to the first attach: kind, size, the writer's `last_seq`.
    pub attached: SessionAttached,
    /// With [`Follow::Snapshot`]: the screen to paint before the output.
    pub screen: Option<SessionScreen>,
}

/// Something that happened in a followed session.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// The next stdout or stderr frame, byte-exact; `replayed` while a
    /// subscription's replay runs (history, not live output).
    Output {
        /// The frame.
        frame: OutputFrame,
        /// Whether it is history rather than live.
        replayed: bool,
    },
    /// An applied input, in its place among the output.
    Input {
        /// The output `seq` of the frame that carried it.
        seq: u64,
        /// The input.
        record: InputRecord,
        /// Whether it is history rather than live.
        replayed: bool,
    },
    /// A (re)subscription finished its replay; what follows is live.
    Synced {
        /// The `seq` of the next output frame.
        next_seq: u64,
    },
    /// The session's run changed state (not to a terminal one).
    Status(Box<RunInfo>),
    /// The session ended after all of its output; the last event.
    Finished(Box<RunInfo>),
}

/// Why a session stopped, or an input could not be taken.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SessionError {
    /// A request failed, or the hub refused one.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A connection could not be kept: a fatal close, giving up, a gap in
    /// the output.
    #[error(transparent)]
    Follow(#[from] FollowError),
    /// The hub's account of this writer's inputs does not fit what it sent.
    #[error(transparent)]
    Inputs(#[from] InputLogError),
    /// The hub refused an input (`INPUT_GAP`, `FORBIDDEN`, a session that
    /// ended, …); nothing after it is sent.
    #[error("the hub refused input {seq}: {error}")]
    InputRefused {
        /// The writer's `seq` of the input.
        seq: u64,
        /// The hub's answer.
        error: ClientError,
    },
    /// An input over [`MAX_SESSION_INPUT_BYTES`].
    #[error("an input is at most {MAX_SESSION_INPUT_BYTES} bytes; this one has {0}")]
    TooLarge(usize),
    /// This attachment is a viewer's.
    #[error("this attachment is not a writer")]
    NotWriter,
    /// The session's task has stopped (its reason came as the last event).
    #[error("the session has stopped")]
    Stopped,
}

/// An attachment to one session that survives dropped connections; see the
/// module documentation.
///
/// Read its events with [`next`](Self::next) (cancel-safe). Dropping it
/// stops its task and closes its connections, which detaches it.
pub struct Session {
    run: RunId,
    kind: SessionKind,
    writer: Option<String>,
    /// The `seq` the next input gets.
    next_seq: u64,
    events_rx: mpsc::Receiver<Result<SessionEvent, SessionError>>,
    commands_tx: mpsc::Sender<Command>,
    acked_rx: watch::Receiver<u64>,
    clients_rx: watch::Receiver<Option<Client>>,
    task: JoinHandle<()>,
}

impl Session {
    /// Attaches to session `run` on `connection` (as a writer when
    /// `options.writer` is set), takes a snapshot if asked to, then follows
    /// the output; connects again to `hub_url` with `token` whenever a
    /// connection drops. Fails as the first attach or snapshot does.
    pub async fn attach(
        connection: (Client, mpsc::Receiver<Event>),
        hub_url: &str,
        token: &str,
        run: RunId,
        options: SessionOptions,
    ) -> Result<Attached, ClientError> {
        if let Some(writer) = &options.writer {
            check_writer_id(writer).map_err(ClientError::Protocol)?;
        }
        let (client, events) = connection;
        let attached = client
            .attach_session(run, options.writer.as_deref())
            .await?;
        let (screen, since) = match options.follow {
            Follow::No => (None, None),
            Follow::From(seq) => (None, Some(seq)),
            Follow::Snapshot => {
                let screen = client.session_snapshot(run).await?;
                let since = screen.next_seq;
                (Some(screen), Some(since))
            }
        };
        let follower = since.map(|since| {
            let follow = FollowOptions {
                since,
                give_up_after: options.give_up_after,
            };
            RunFollower::new(hub_url, token, run, follow)
        });
        let reconnector = Reconnector::new(hub_url, token, options.give_up_after);
        let session = Self::spawn(
            (client, events),
            reconnector,
            &attached,
            options.writer,
            follower,
        );
        Ok(Attached {
            session,
            attached,
            screen,
        })
    }

    fn spawn(
        connection: (Client, mpsc::Receiver<Event>),
        reconnector: Reconnector,
        attached: &SessionAttached,
        writer: Option<String>,
        follower: Option<RunFollower>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(SESSION_EVENT_CAPACITY);
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (acked_tx, acked_rx) = watch::channel(attached.last_seq);
        let (clients_tx, clients_rx) = watch::channel(Some(connection.0.clone()));
        let task = SessionTask::new(task::Parts {
            run: attached.run,
            writer: writer.clone(),
            last_seq: attached.last_seq,
            connection,
            reconnector,
            follower,
            events_tx,
            commands_rx,
            acked_tx,
            clients_tx,
        });
        Self {
            run: attached.run,
            kind: attached.kind,
            writer,
            next_seq: attached.last_seq + 1,
            events_rx,
            commands_tx,
            acked_rx,
            clients_rx,
            task: tokio::spawn(task.run()),
        }
    }

    /// The session (its run's id).
    pub fn run(&self) -> RunId {
        self.run
    }

    /// Pty or pipe.
    pub fn kind(&self) -> SessionKind {
        self.kind
    }

    /// The writer id, for a writer.
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }

    /// The next event; `None` after [`SessionEvent::Finished`] or an error.
    /// Without a followed output, only errors come. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<SessionEvent, SessionError>> {
        self.events_rx.recv().await
    }

    /// Queues one input (pty: keystrokes; pipe: one message) and returns its
    /// `seq`. It is sent at once when the attachment is up, else after the
    /// next attach, and kept until the hub acknowledges it. Waits while
    /// [`MAX_UNACKED_INPUTS`] are unacknowledged.
    pub async fn input(&mut self, data: String) -> Result<u64, SessionError> {
        if self.writer.is_none() {
            return Err(SessionError::NotWriter);
        }
        if data.len() > MAX_SESSION_INPUT_BYTES {
            return Err(SessionError::TooLarge(data.len()));
        }
        let seq = self.next_seq;
        self.commands_tx
            .send(Command::Input { seq, data })
            .await
            .map_err(|_| SessionError::Stopped)?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Waits until the hub has acknowledged every input up to `seq`. The
    /// future does not borrow the session, so [`next`](Self::next) can be
    /// awaited beside it (for the error that would stop it).
    pub fn acked(
        &self,
        seq: u64,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        let mut acked_rx = self.acked_rx.clone();
        async move {
            let acked = acked_rx.wait_for(|acked| *acked >= seq).await;
            acked.map(drop).map_err(|_| SessionError::Stopped)
        }
    }

    /// Resizes the terminal (pty writers); the latest size is sent again
    /// after a reconnect.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), SessionError> {
        if self.writer.is_none() {
            return Err(SessionError::NotWriter);
        }
        self.commands_tx
            .send(Command::Resize { cols, rows })
            .await
            .map_err(|_| SessionError::Stopped)
    }

    /// The screen now (pty), asked on the attachment in use.
    pub async fn snapshot(&self) -> Result<SessionScreen, SessionError> {
        let client = self.client().await?;
        Ok(client.session_snapshot(self.run).await?)
    }

    /// The attachment's connection, waiting while it reconnects: for
    /// requests about the session, such as [`Client::cancel_run`].
    pub async fn client(&self) -> Result<Client, SessionError> {
        let mut clients_rx = self.clients_rx.clone();
        let current = clients_rx.wait_for(Option::is_some).await;
        let client = current.map_err(|_| SessionError::Stopped)?.clone();
        client.ok_or(SessionError::Stopped)
    }

    /// Detaches (`session.detach`) and closes the connections; the session
    /// goes on without this attachment.
    pub async fn detach(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .commands_tx
            .send(Command::Detach { done_tx })
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
        self.close().await;
    }

    /// Stops and closes the connections (which detaches too).
    pub async fn close(self) {
        drop(self.events_rx);
        drop(self.commands_tx);
        let _ = self.task.await;
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("run", &self.run)
            .field("kind", &self.kind)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}
