//! An interactive session on the local terminal, for `muster shell` and
//! `muster sessions attach`: one `select!` over the session's events, stdin
//! and signals.
//!
//! - Output is written raw (it is the remote terminal's), except what is
//!   replayed from history (the screen of a snapshot, the frames before
//!   `stream.synced`), from which terminal queries are stripped first, and
//!   stdin is dropped until the replay has caught up: the local terminal
//!   must not answer a query into the remote shell.
//! - On a terminal, a pty session puts it in raw mode (restored on every
//!   way out), every read from stdin is one input, `~.` after Enter
//!   detaches (`~~` sends one `~`, `~?` lists them), and the window size
//!   follows SIGWINCH. Without a terminal, stdin is sent as it comes, and at
//!   its end a pty session gets one Ctrl-D (end of input at a shell prompt).
//! - A pipe session sends each line of stdin as one message (without its
//!   newline) and shows each applied input on stderr as `FROM> TEXT`.
//! - SIGINT (without raw mode), SIGTERM and SIGHUP detach and exit 128+N.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use muster_client::{Session, SessionError, SessionEvent};
use muster_proto::sessions::{InputRecord, MAX_SESSION_INPUT_BYTES, SessionKind, SessionScreen};
use muster_proto::{ErrorCode, OutputStream, RunInfo, RunState};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::escape::{self, Action, EscapeScanner};
use super::queries::QueryStripper;
use super::terminal::{self, RawMode};
use super::utf8::{Utf8Decoder, chunks};
use crate::cli::exit::run_exit;
use crate::cli::output::escape as escape_text;

/// Exit code after detaching (`~.`): the session goes on.
pub(crate) const EXIT_DETACHED: u8 = 254;

/// End of transmission: what Ctrl-D types.
const CTRL_D: &str = "\u{4}";

/// How the local side takes part.
pub(crate) struct Interactive {
    session: Session,
    kind: SessionKind,
    writer: bool,
    /// Stdin is a terminal.
    tty: bool,
    escapes: EscapeScanner,
    stripper: QueryStripper,
    /// The replay has caught up: output is live and stdin is sent.
    live: bool,
    stdin_rx: Option<mpsc::Receiver<Vec<u8>>>,
    decoder: Utf8Decoder,
    /// A pipe session's line typed so far.
    line: String,
    /// Without a terminal, what stdin gave before the replay caught up
    /// (nothing there answers queries, so it is kept, not dropped), and
    /// whether it ended.
    held: Vec<Vec<u8>>,
    held_end: bool,
}

/// How the loop ended.
enum End {
    Finished(Box<RunInfo>),
    Detached,
    Signal(i32),
}

/// The signals the loop watches.
struct Signals {
    winch: Signal,
    term: Signal,
    hup: Signal,
    int: Option<Signal>,
}

impl Interactive {
    /// Takes over `session`, on a terminal or not.
    pub(crate) fn new(session: Session) -> Self {
        let kind = session.kind();
        let writer = session.writer().is_some();
        let tty = terminal::stdin_is_terminal();
        Self {
            session,
            kind,
            writer,
            tty,
            escapes: EscapeScanner::default(),
            stripper: QueryStripper::default(),
            live: false,
            // A viewer without a terminal has nothing to read.
            stdin_rx: (writer || tty).then(terminal::read_stdin),
            decoder: Utf8Decoder::default(),
            line: String::new(),
            held: Vec::new(),
            held_end: false,
        }
    }

    /// Paints `screen` (stripped of queries), then runs until the session
    /// ends, the user detaches or a signal comes; returns the exit code.
    pub(crate) async fn run(mut self, screen: Option<SessionScreen>) -> anyhow::Result<ExitCode> {
        let raw = match self.tty && self.kind == SessionKind::Pty {
            true => Some(RawMode::enable()?),
            false => None,
        };
        let mut signals = Signals::install(raw.is_none())?;
        if let Some(screen) = screen {
            self.write_replayed(OutputStream::Stdout, screen.data.as_bytes())?;
        }
        let end = self.serve(&mut signals).await;
        drop(raw);
        let end = end?;
        match end {
            End::Finished(run) => Ok(ExitCode::from(finished(&run))),
            End::Detached => {
                self.session.detach().await;
                eprintln!("muster: detached; the session goes on");
                Ok(ExitCode::from(EXIT_DETACHED))
            }
            End::Signal(signo) => {
                self.session.detach().await;
                Ok(ExitCode::from(u8::try_from(128 + signo).unwrap_or(255)))
            }
        }
    }

    async fn serve(&mut self, signals: &mut Signals) -> anyhow::Result<End> {
        loop {
            let end = tokio::select! {
                event = self.session.next() => self.on_event(event).await?,
                read = next_read(&mut self.stdin_rx) => self.on_stdin(read).await?,
                _ = signals.winch.recv() => self.on_resize().await,
                _ = signals.term.recv() => Some(End::Signal(libc_signal::TERM)),
                _ = signals.hup.recv() => Some(End::Signal(libc_signal::HUP)),
                _ = next_signal(&mut signals.int) => Some(End::Signal(libc_signal::INT)),
            };
            if let Some(end) = end {
                return Ok(end);
            }
        }
    }

    async fn on_event(
        &mut self,
        event: Option<Result<SessionEvent, SessionError>>,
    ) -> anyhow::Result<Option<End>> {
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(err)) => return Err(err).context("the session was lost; it may go on"),
            None => anyhow::bail!("stopped following the session before it ended"),
        };
        match event {
            SessionEvent::Output { frame, replayed } => {
                let stream = frame.header.stream;
                match replayed {
                    true => self.write_replayed(stream, &frame.payload)?,
                    false => self.write_live(stream, &frame.payload)?,
                }
            }
            SessionEvent::Input { record, .. } if self.kind == SessionKind::Pipe => {
                self.show_input(&record)?;
            }
            SessionEvent::Input { .. } | SessionEvent::Status(_) => {}
            SessionEvent::Synced { .. } => {
                let mut held = Vec::new();
                self.stripper.flush(&mut held);
                write_to(OutputStream::Stdout, &held)?;
                if !self.live {
                    self.live = true;
                    self.send_held().await?;
                }
            }
            SessionEvent::Finished(run) => return Ok(Some(End::Finished(run))),
        }
        Ok(None)
    }

    fn write_replayed(&mut self, stream: OutputStream, bytes: &[u8]) -> anyhow::Result<()> {
        let mut clean = Vec::with_capacity(bytes.len());
        self.stripper.feed(bytes, &mut clean);
        write_to(stream, &clean)
    }

    fn write_live(&mut self, stream: OutputStream, bytes: &[u8]) -> anyhow::Result<()> {
        let mut held = Vec::new();
        self.stripper.flush(&mut held);
        held.extend_from_slice(bytes);
        write_to(stream, &held)
    }

    fn show_input(&self, record: &InputRecord) -> anyhow::Result<()> {
        let line = format!(
            "{}> {}\n",
            escape_text(&record.from),
            escape_text(&record.data)
        );
        write_to(OutputStream::Stderr, line.as_bytes())
    }

    async fn on_stdin(&mut self, read: Option<Vec<u8>>) -> anyhow::Result<Option<End>> {
        let Some(bytes) = read else {
            self.stdin_rx = None;
            if !self.live {
                self.held_end = true;
                return Ok(None);
            }
            return self.on_stdin_end().await.map(|()| None);
        };
        if !self.live {
            // Typed while history was replayed: maybe the terminal's answers.
            if !self.tty {
                self.held.push(bytes);
            }
            return Ok(None);
        }
        let (bytes, action) = match self.tty {
            true => self.escapes.feed(&bytes),
            false => (bytes, None),
        };
        self.send(&bytes).await?;
        match action {
            Some(Action::Detach) => Ok(Some(End::Detached)),
            Some(Action::Help) => {
                write_to(OutputStream::Stderr, escape::HELP.as_bytes())?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Sends what a non-terminal stdin gave during the replay.
    async fn send_held(&mut self) -> anyhow::Result<()> {
        for bytes in std::mem::take(&mut self.held) {
            self.send(&bytes).await?;
        }
        if self.held_end {
            self.on_stdin_end().await?;
        }
        Ok(())
    }

    /// Sends typed bytes: a pty's as they are, a pipe's line by line.
    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if !self.writer || bytes.is_empty() {
            return Ok(());
        }
        let text = self.decoder.decode(bytes);
        match self.kind {
            SessionKind::Pty => self.send_text(&text).await,
            SessionKind::Pipe => {
                self.line.push_str(&text);
                while let Some(end) = self.line.find('\n') {
                    let line: String = self.line.drain(..=end).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    self.send_text(line).await?;
                }
                Ok(())
            }
        }
    }

    async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        for piece in chunks(text, MAX_SESSION_INPUT_BYTES) {
            self.session.input(piece.to_owned()).await?;
        }
        Ok(())
    }

    /// Stdin ended: a pipe's last line goes, a pty without a terminal gets Ctrl-D.
    async fn on_stdin_end(&mut self) -> anyhow::Result<()> {
        if !self.writer || self.tty {
            return Ok(());
        }
        match self.kind {
            SessionKind::Pipe if !self.line.is_empty() => {
                let line = std::mem::take(&mut self.line);
                self.send_text(&line).await
            }
            SessionKind::Pipe => Ok(()),
            SessionKind::Pty => self.send_text(CTRL_D).await,
        }
    }

    async fn on_resize(&mut self) -> Option<End> {
        if !self.writer || self.kind != SessionKind::Pty {
            return None;
        }
        if let Some((cols, rows)) = terminal::window_size()
            && let Err(err) = self.session.resize(cols, rows).await
        {
            tracing::debug!(error = %err, "resizing the session failed");
        }
        None
    }
}

/// Signal numbers, for `128 + N`.
mod libc_signal {
    pub(super) const HUP: i32 = 1;
    pub(super) const INT: i32 = 2;
    pub(super) const TERM: i32 = 15;
}

impl Signals {
    /// Takes over SIGWINCH, SIGTERM, SIGHUP and, with `int`, SIGINT.
    fn install(int: bool) -> anyhow::Result<Self> {
        let install = |kind| signal(kind).context("installing a signal handler");
        Ok(Self {
            winch: install(SignalKind::window_change())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
            int: match int {
                true => Some(install(SignalKind::interrupt())?),
                false => None,
            },
        })
    }
}

/// The exit code for an ended session, with a line on stderr when it has no
/// exit status of its own.
fn finished(run: &RunInfo) -> u8 {
    let exit = run_exit(run);
    let idle = match run.error_code {
        Some(ErrorCode::SessionIdle) => Some("nothing came in or out for its idle timeout"),
        Some(ErrorCode::SessionLifetime) => Some("it reached its maximum lifetime"),
        _ => None,
    };
    match (run.state, idle) {
        (RunState::TimedOut, Some(why)) => eprintln!("muster: the session ended: {why}"),
        (RunState::Cancelled, _) => eprintln!("muster: the session was closed"),
        _ => {
            if let Some(message) = exit.message {
                eprintln!("muster: {message}");
            }
        }
    }
    exit.code
}

/// Writes to the local stdout or stderr at once; a closed pipe is ignored.
fn write_to(stream: OutputStream, bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let written = match stream {
        OutputStream::Stderr => {
            let mut stderr = std::io::stderr().lock();
            stderr.write_all(bytes).and_then(|()| stderr.flush())
        }
        _ => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes).and_then(|()| stdout.flush())
        }
    };
    match written {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing the session's output")
        }
        _ => Ok(()),
    }
}

/// The next read from stdin, or pending once it has ended.
async fn next_read(stdin_rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match stdin_rx {
        Some(reads) => reads.recv().await,
        None => std::future::pending().await,
    }
}

/// The next SIGINT, if watched.
async fn next_signal(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
