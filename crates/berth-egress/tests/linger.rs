//! A sandbox cannot stall the proxy through the descriptors it sends. A TCP socket with
//! `SO_LINGER {on, 600 s}` whose send queue is full toward a peer that never reads makes its
//! final `close()` wait in the kernel until the peer goes away; the proxy's runtime must never be
//! the one waiting. Each case runs the proxy on a current-thread runtime of its own, sends it
//! such a socket one way or another, and checks that a 100 ms sleep on that runtime still ends
//! in time.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use berth_core::egress::{Host, Policy};
use berth_egress::{handoff, Config, Limits, Proxy};

/// The proxy on a current-thread runtime in a thread of its own.
struct Isolated {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A forward target for `tcp-0`, accepting and holding its connections.
    _upstream: TcpListener,
}

impl Isolated {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let config = Config {
            policy: Policy::new(&[]).unwrap(),
            tcp: vec![(
                Host::Ip(Ipv4Addr::LOCALHOST.into()),
                upstream.local_addr().unwrap().port(),
            )],
            limits: Limits {
                header_timeout: Duration::from_millis(300),
                ..Limits::default()
            },
            ..Config::default()
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let d = dir.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let proxy = Proxy::start(
                    std::fs::File::open(&d).unwrap().into(),
                    &["proxy".to_string(), "tcp-0".to_string()],
                    config,
                    std::sync::Arc::new(|_| {}),
                )
                .unwrap();
                ready_tx.send(tokio::runtime::Handle::current()).unwrap();
                let _ = stopped.await;
                drop(proxy);
            });
        });
        let handle = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            _tmp: tmp,
            dir,
            handle,
            stop: Some(stop),
            thread: Some(thread),
            _upstream: upstream,
        }
    }

    /// Whether a 100 ms sleep on the proxy's runtime ends within a few seconds.
    fn responsive(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.handle.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(3)).is_ok()
    }

    /// Holds the proxy's runtime still until the guard is dropped, so that whatever is sent in
    /// the meantime arrives before the proxy reads anything, and the sender's copies of a
    /// descriptor are closed before the proxy has one: its close is then the last.
    fn pause(&self) -> Pause {
        let (held, holding) = mpsc::channel();
        let (go, going) = mpsc::channel::<()>();
        self.handle.spawn(async move {
            held.send(()).unwrap();
            let _ = going.recv();
        });
        holding.recv_timeout(Duration::from_secs(10)).unwrap();
        Pause(go)
    }

    fn connect(&self, socket: &str) -> UnixStream {
        let s = UnixStream::connect(self.dir.join(socket)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    }
}

/// Dropping it lets the proxy's runtime go on.
struct Pause(#[allow(dead_code)] mpsc::Sender<()>);

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connected TCP socket whose close would linger for 600 s: `SO_LINGER {on, 600}` and a send
/// queue full toward a peer that never reads. The peer comes back too: closing it (with unread
/// data, so it resets) releases any close waiting on the socket.
fn lingering_socket() -> (OwnedFd, TcpStream) {
    use rustix::net::sockopt;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    sockopt::set_socket_recv_buffer_size(&listener, 4096).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    sockopt::set_socket_recv_buffer_size(&peer, 4096).unwrap();
    sockopt::set_socket_send_buffer_size(&client, 4096).unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = [b'x'; 4096];
    let mut sent = 0usize;
    loop {
        match (&client).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the send queue: {e}"),
        }
        assert!(sent < 64 << 20, "the send queue never fills");
    }
    sockopt::set_socket_linger(&client, Some(Duration::from_secs(600))).unwrap();
    (client.into(), peer)
}

/// Sends `bytes` with `fds` (`SCM_RIGHTS`) on `to`.
fn send(to: &UnixStream, bytes: &[u8], fds: &[&dyn AsFd]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    }
    let sent = rustix::net::sendmsg(
        to,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    );
    assert_eq!(sent, Ok(bytes.len()));
}

/// The proxy's answer to an offer, if one comes within the read timeout.
fn answer(from: &mut UnixStream) -> Option<u8> {
    let mut byte = [0u8];
    from.read_exact(&mut byte).ok().map(|()| byte[0])
}

/// Runs `attack` against a fresh proxy with a fresh lingering socket (the attack must let go of
/// the socket), then checks the proxy's runtime still runs.
fn check(what: &str, attack: impl FnOnce(&Isolated, OwnedFd)) {
    let proxy = Isolated::start();
    let (socket, peer) = lingering_socket();
    attack(&proxy, socket);
    let responsive = proxy.responsive();
    // Releases a close stuck on the socket, so the proxy's thread can be joined either way.
    drop(peer);
    drop(proxy);
    assert!(responsive, "{what}: the proxy's runtime is stalled");
}

#[test]
fn a_refused_offer_does_not_stall_the_proxy() {
    check("another byte", |proxy, socket| {
        let pause = proxy.pause();
        let mut forwarder = proxy.connect(&handoff::socket_name("proxy"));
        send(&forwarder, b"x", &[&socket]);
        drop(socket);
        drop(pause);
        std::thread::sleep(Duration::from_millis(100));
        assert!(proxy.responsive());
        assert_eq!(answer(&mut forwarder), Some(handoff::REFUSED));
    });
    check(
        "more descriptors than an offer has room for",
        |proxy, socket| {
            let pause = proxy.pause();
            let (a, _a) = UnixStream::pair().unwrap();
            let (b, _b) = UnixStream::pair().unwrap();
            let mut forwarder = proxy.connect(&handoff::socket_name("proxy"));
            send(&forwarder, &[handoff::OFFER], &[&a, &b, &socket]);
            drop(socket);
            drop(pause);
            std::thread::sleep(Duration::from_millis(100));
            assert!(proxy.responsive());
            assert_eq!(answer(&mut forwarder), Some(handoff::REFUSED));
        },
    );
}

#[test]
fn descriptors_queued_behind_an_offer_do_not_stall_the_proxy() {
    check("a second message after a bare offer", |proxy, socket| {
        let pause = proxy.pause();
        let mut forwarder = proxy.connect(&handoff::socket_name("proxy"));
        send(&forwarder, &[handoff::OFFER, b'x'], &[]);
        send(&forwarder, b"y", &[&socket]);
        drop(socket);
        drop(pause);
        assert_eq!(answer(&mut forwarder), Some(handoff::REFUSED));
        drop(forwarder);
        std::thread::sleep(Duration::from_millis(100));
    });
    check("a second message after a taken offer", |proxy, socket| {
        let pause = proxy.pause();
        let (_client, accepted) = tcp_pair();
        let mut forwarder = proxy.connect(&handoff::socket_name("proxy"));
        send(&forwarder, &[handoff::OFFER], &[&accepted]);
        send(&forwarder, b"y", &[&socket]);
        drop((socket, accepted));
        drop(pause);
        assert_eq!(answer(&mut forwarder), Some(handoff::TAKEN));
        drop(forwarder);
        std::thread::sleep(Duration::from_millis(100));
    });
}

#[test]
fn a_taken_connection_that_ends_does_not_stall_the_proxy() {
    // Silence until the header timeout (300 ms here) ends the connection.
    check("taken by `proxy`", |proxy, socket| {
        let pause = proxy.pause();
        let mut forwarder = proxy.connect(&handoff::socket_name("proxy"));
        send(&forwarder, &[handoff::OFFER], &[&socket]);
        drop(socket);
        drop(pause);
        assert_eq!(answer(&mut forwarder), Some(handoff::TAKEN));
        drop(forwarder);
        std::thread::sleep(Duration::from_millis(800));
    });
}

#[test]
fn descriptors_sent_with_copied_bytes_do_not_stall_the_proxy() {
    // `NAME.sock` carries bytes only, but the sandbox can attach descriptors to them.
    check("sent to `proxy`", |proxy, socket| {
        let pause = proxy.pause();
        let forwarder = proxy.connect("proxy.sock");
        send(
            &forwarder,
            b"GET http://a.example/ HTTP/1.1\r\n",
            &[&socket],
        );
        drop(socket);
        drop(pause);
        std::thread::sleep(Duration::from_millis(800));
        drop(forwarder);
        std::thread::sleep(Duration::from_millis(100));
    });
    check("sent to `tcp-0`", |proxy, socket| {
        let pause = proxy.pause();
        let forwarder = proxy.connect("tcp-0.sock");
        send(&forwarder, b"hello", &[&socket]);
        drop(socket);
        drop(pause);
        std::thread::sleep(Duration::from_millis(300));
        drop(forwarder);
        std::thread::sleep(Duration::from_millis(100));
    });
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    (client, accepted)
}
