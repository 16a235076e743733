//! Test support for fault tests: a TCP proxy on loopback that sits between two
//! Muster processes and can cut every connection through it, stall them, or
//! be pointed at a new upstream (a restarted hub on a new port).
//!
//! The proxy runs on its own thread with its own runtime, so both async tests
//! and plain `#[test]` functions that drive processes can use it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes copied per read; small enough that a stall takes effect quickly.
const COPY_BUFFER_BYTES: usize = 16 * 1024;

/// A loopback TCP proxy. Dropping it stops it and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    control: Arc<Control>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Control {
    upstream: Mutex<SocketAddr>,
    /// Bumped to cut every connection open at that moment.
    generation: watch::Sender<u64>,
    /// While true, no byte is forwarded in either direction.
    stalled: watch::Sender<bool>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` that forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let control = Arc::new(Control {
            upstream: Mutex::new(upstream),
            generation: watch::channel(0).0,
            stalled: watch::channel(false).0,
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = thread::spawn({
            let control = control.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                    addr_tx
                        .send(listener.local_addr().expect("proxy addr"))
                        .ok();
                    tokio::select! {
                        _ = accept_loop(listener, control) => {}
                        _ = stop_rx => {}
                    }
                });
            }
        });
        let addr = addr_rx.recv().expect("proxy started");
        Self {
            addr,
            control,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The address to dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for `--hub`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `upstream` from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.control.upstream.lock().expect("proxy lock") = upstream;
    }

    /// Closes every connection open now; new ones are accepted as usual.
    pub fn cut(&self) {
        self.control.generation.send_modify(|g| *g += 1);
    }

    /// How many times every connection has been cut so far.
    pub fn cuts(&self) -> u64 {
        *self.control.generation.borrow()
    }

    /// Stops (true) or resumes (false) forwarding bytes on every connection.
    pub fn stall(&self, stalled: bool) {
        self.control.stalled.send_replace(stalled);
    }

    /// Cuts every connection each `period` until the returned guard is dropped.
    pub fn cut_every(&self, period: Duration) -> Cutter {
        let control = self.control.clone();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(period)
            {
                control.generation.send_modify(|g| *g += 1);
            }
        });
        Cutter {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Stops the periodic cuts of [`Proxy::cut_every`] when dropped.
pub struct Cutter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Cutter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, control: Arc<Control>) {
    while let Ok((inbound, _)) = listener.accept().await {
        let control = control.clone();
        tokio::spawn(async move {
            let upstream = *control.upstream.lock().expect("proxy lock");
            let Ok(outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            relay(inbound, outbound, &control).await;
        });
    }
}

/// Copies both ways until either side closes or the connection is cut.
async fn relay(inbound: TcpStream, outbound: TcpStream, control: &Control) {
    let mut generation = control.generation.subscribe();
    generation.mark_unchanged();
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = copy(in_read, out_write, control.stalled.subscribe());
    let down = copy(out_read, in_write, control.stalled.subscribe());
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.changed() => {}
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        while *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn forwards_and_cuts() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = Proxy::start(echo_addr);
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        proxy.cut();
        let mut rest = Vec::new();
        let n = conn.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "the cut connection reaches end of file");
    }
}
