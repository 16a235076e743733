//! No lock-out from outside: while an attacker without a token holds every
//! unauthenticated slot and keeps 5,000 half-sent requests open from one
//! address, a real agent connects and a real `muster run` completes.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};

use crate::fixture::{Server, path_in, tempdir};

/// Unauthenticated connections the hub allows in all, and from one address
/// (the defaults, given explicitly).
const CAP: usize = 2048;
const CAP_PER_SOURCE: usize = 512;
/// Half-sent requests from the slowloris address.
const SLOWLORIS: usize = 5_000;
/// Sockets the attacker holds at once, so this process stays within its files.
const HELD: usize = SLOWLORIS + 2 * CAP;

/// Upgraded WebSockets that never say `hello` come from 127.0.0.2–8; the
/// slowloris requests from 127.0.0.9. Real agents and clients use 127.0.0.1.
fn attacker_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 7) as u8)
}

const UPGRADE: &[u8] = b"GET /ws/agent HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
const HALF_SENT: &[u8] = b"GET /ws/agent HTTP/1.1\r\nHost: hub\r\nUpgrade: web";

async fn open(hub: SocketAddr, from: Ipv4Addr, request: &[u8]) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind((from, 0).into()).ok()?;
    let mut tcp = socket.connect(hub).await.ok()?;
    tcp.write_all(request).await.ok()?;
    Some(tcp)
}

/// What the attacker thread is told, and what it tells.
#[derive(Default)]
struct Attack {
    /// Keep opening connections once every slot is taken (else hold them).
    churn: AtomicBool,
    stop: AtomicBool,
    opened: AtomicU64,
}

/// Opens attack connections, holding the newest [`HELD`]; once it holds
/// them, it says so on `filled` and goes on only while `churn` is set.
async fn attack(hub: SocketAddr, attack: Arc<Attack>, filled: std::sync::mpsc::Sender<()>) {
    let mut held = VecDeque::with_capacity(HELD);
    let mut i = 0usize;
    while !attack.stop.load(Ordering::Relaxed) {
        if i >= HELD && !attack.churn.load(Ordering::Relaxed) {
            // Every slot taken: hold them all, idle.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (from, request) = if i.is_multiple_of(3) {
            (attacker_address(i / 3), UPGRADE)
        } else {
            (Ipv4Addr::new(127, 0, 0, 9), HALF_SENT)
        };
        if let Some(tcp) = open(hub, from, request).await {
            attack.opened.fetch_add(1, Ordering::Relaxed);
            if held.len() == HELD {
                held.pop_front();
            }
            held.push_back(tcp);
        }
        i += 1;
        if i == HELD {
            let _ = filled.send(());
        }
    }
}

/// The hub's open files and resident memory, from /proc.
fn files_and_rss(pid: i32) -> (usize, String) {
    let files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map_or_else(String::new, |v| v.trim().to_owned());
    (files, rss)
}

#[test]
fn a_real_agent_and_run_get_in_while_every_unauthenticated_slot_is_held() {
    let dir = tempdir();
    let hub = Server::hub_with(
        &path_in(&dir, "hub"),
        true,
        &[
            "--max-unauthenticated",
            &CAP.to_string(),
            "--max-unauthenticated-per-source",
            &CAP_PER_SOURCE.to_string(),
        ],
    );
    let admin = hub.token.clone().expect("first start prints a token");
    let cli = hub.cli(&admin);
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let agent_token = added["token"].as_str().expect("agent token").to_owned();
    let addr: SocketAddr = hub
        .hub
        .trim_start_matches("http://")
        .parse()
        .expect("hub address");

    let attack_state = Arc::new(Attack::default());
    let (filled_tx, filled) = std::sync::mpsc::channel();
    let attacker = {
        let attack_state = attack_state.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(attack(addr, attack_state, filled_tx));
        })
    };
    filled
        .recv_timeout(Duration::from_secs(120))
        .expect("the attack opens its sockets");
    let pid = hub.pid().as_raw();
    // The hub closes what it evicted as fast as it gets to it; then it holds
    // its cap, not the attacker's sockets.
    let bound = CAP + 64;
    let (files_filled, _) = files_and_rss(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (files_held, rss_held) = loop {
        let (files, rss) = files_and_rss(pid);
        if files <= bound || Instant::now() > deadline {
            break (files, rss);
        }
        std::thread::sleep(Duration::from_millis(5));
    };

    // Every unauthenticated slot held, 5,000 requests half-sent: the agent
    // connects and a run goes through.
    let started = Instant::now();
    let _agent = Server::agent(
        &hub.hub,
        &agent_token,
        "web-1",
        &path_in(&dir, "state"),
        &[],
    );
    cli.wait_agent("web-1", "online");
    let online = started.elapsed();
    let out = cli.output(&["run", "web-1", "--", "echo", "through"]);
    let took = started.elapsed();
    let (files_after, rss_after) = files_and_rss(pid);
    eprintln!(
        "lockout, slots held: agent online after {online:?}, run done after {took:?}; \
         hub files {files_filled} / {files_held} / {files_after}, RSS {rss_held} / {rss_after} \
         (attack sockets all open / settled / run done)"
    );
    assert!(out.status.success(), "the run failed: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through\n");
    assert!(
        files_held <= bound && files_after <= bound,
        "the hub holds {files_held} / {files_after} files, over {bound}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the agent and its run took {took:?} under attack"
    );

    // The attacker opens connections as fast as it can: a run still goes
    // through (this machine's two cores are shared with the attacker).
    let before = attack_state.opened.load(Ordering::Relaxed);
    attack_state.churn.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let out = cli.output(&["run", "web-1", "--", "echo", "again"]);
    let took = started.elapsed();
    let (files_churn, rss_churn) = files_and_rss(pid);
    let opened = attack_state.opened.load(Ordering::Relaxed) - before;
    attack_state.stop.store(true, Ordering::Relaxed);
    attacker.join().expect("the attacker thread");
    eprintln!(
        "lockout, connection flood: run done after {took:?} while {opened} sockets opened; \
         hub files {files_churn}, RSS {rss_churn}"
    );
    assert!(
        out.status.success(),
        "the run failed under the flood: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");
}
