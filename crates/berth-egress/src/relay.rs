//! Tunnels: the bytes of a `CONNECT` or a raw TCP forward, both ways between the sandbox's
//! connection (a unix socket) and the upstream (a TCP socket), counted per direction.
//!
//! The bytes move with splice(2) through one pipe per direction: the kernel passes the socket
//! buffers' pages on, and nothing is copied into or out of this process. The proxy's hop then
//! costs about what the kernel's socket work costs (`bench/egress.py`). Each pipe holds at most
//! [`PIPE_BYTES`], so a tunnel buffers no more than the copy it replaces did.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use crate::Tracker;

/// The most one direction of a tunnel holds in its pipe, and moves in one splice.
const PIPE_BYTES: usize = 256 << 10;

/// Tunnels a `CONNECT` after its `200`: `upgraded` is the sandbox's connection as hyper hands
/// it back. Bytes the client sent right after its request, which hyper has read already, go
/// upstream first.
pub(crate) async fn tunnel_upgraded(
    upgraded: Upgraded,
    mut upstream: TcpStream,
    tracker: &Arc<Tracker>,
) {
    let parts = match upgraded.downcast::<TokioIo<UnixStream>>() {
        Ok(parts) => parts,
        // Only if `serve_http` stops serving the unix socket itself: a bug, said in the record.
        Err(_) => {
            tracker.set(|r| r.error = Some("tunnel: the connection is not a unix socket".into()));
            return;
        }
    };
    if !parts.read_buf.is_empty() {
        if let Err(e) = upstream.write_all(&parts.read_buf).await {
            note_error(tracker, &e);
            return;
        }
        let n = parts.read_buf.len() as u64;
        tracker.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
    tunnel(parts.io.into_inner(), upstream, tracker).await;
}

/// Moves bytes both ways until both directions have ended; the end of each direction is passed
/// on as a half-close, so one side can finish sending while the other goes on. The counts are
/// added as bytes are delivered (so they survive an error or an abort): `bytes_out` what reached
/// the upstream, `bytes_in` what reached the sandbox. A peer that resets or goes away is the
/// normal end of a tunnel, not an error.
pub(crate) async fn tunnel(client: UnixStream, upstream: TcpStream, tracker: &Arc<Tracker>) {
    if let Err(e) = relay(client, upstream, &tracker.bytes_out, &tracker.bytes_in).await {
        note_error(tracker, &e);
    }
}

fn note_error(tracker: &Tracker, e: &io::Error) {
    use io::ErrorKind::*;
    if !matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    ) {
        tracker.set(|r| r.error = Some(format!("tunnel: {e}")));
    }
}

async fn relay(
    client: UnixStream,
    upstream: TcpStream,
    out: &AtomicU64,
    into: &AtomicU64,
) -> io::Result<()> {
    let (up, down) = (Pipe::new()?, Pipe::new()?);
    tokio::try_join!(
        pump(&client, &upstream, &up, out),
        pump(&upstream, &client, &down, into),
    )?;
    Ok(())
}

/// A non-blocking socket of tokio's, whose readiness a pump waits on.
trait Socket: AsFd {
    /// Runs `f` when the socket is ready for `interest`, again after each `WouldBlock`.
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R>;
}

impl Socket for TcpStream {
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.async_io(interest, f).await
    }
}

impl Socket for UnixStream {
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.async_io(interest, f).await
    }
}

/// One direction: `from` into the pipe, the pipe into `to`, until `from` ends; then `to` is
/// shut for writing. The pipe is empty whenever `from` is read and holds bytes whenever `to` is
/// written, so a splice that would block is always the socket's doing, and waiting for that
/// socket's readiness is right.
async fn pump(
    from: &impl Socket,
    to: &impl Socket,
    pipe: &Pipe,
    delivered: &AtomicU64,
) -> io::Result<()> {
    loop {
        let mut held = from
            .io(Interest::READABLE, || {
                sys::splice(from, &pipe.write, PIPE_BYTES)
            })
            .await?;
        if held == 0 {
            // A peer already gone has nothing to be told.
            return match sys::shutdown_write(to) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        while held > 0 {
            let n = to
                .io(Interest::WRITABLE, || sys::splice(&pipe.read, to, held))
                .await?;
            held -= n;
            delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// A pipe, both ends non-blocking, sized to [`PIPE_BYTES`] where the system allows.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = sys::pipe()?;
        // A smaller pipe (over the user's pipe quota) still works, in smaller steps.
        let _ = sys::set_pipe_size(&write, PIPE_BYTES);
        Ok(Self { read, write })
    }
}

/// The system calls, each with integer arguments and descriptors held open for the call.
#[allow(unsafe_code)] // splice(2), pipe2(2), fcntl(2) and shutdown(2) have no std wrappers.
mod sys {
    use super::*;

    fn check(rc: libc::ssize_t) -> io::Result<usize> {
        usize::try_from(rc).map_err(|_| io::Error::last_os_error())
    }

    /// Moves up to `len` bytes from `from` to `to`, one of which is a pipe, without waiting.
    /// A socket whose peer has gone raises SIGPIPE, as write(2) does: Rust programs (berth and
    /// the benchmark's proxy) ignore it and get `EPIPE`.
    pub(super) fn splice(from: &impl AsFd, to: &impl AsFd, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are borrowed, so open for the call; the offsets are null
        // (sockets and pipes have none), and no memory of ours is read or written.
        check(unsafe {
            libc::splice(
                from.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                to.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        })
    }

    /// A new pipe: (read end, write end), non-blocking, close-on-exec.
    pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given, which has room for
        // exactly two.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        check(rc as libc::ssize_t)?;
        // SAFETY: pipe2 succeeded, so both are new descriptors that nothing else owns.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    pub(super) fn set_pipe_size(pipe: &OwnedFd, bytes: usize) -> io::Result<usize> {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an integer; the descriptor is borrowed.
        check(unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) } as _)
    }

    /// shutdown(SHUT_WR): the peer reads the end of this direction.
    pub(super) fn shutdown_write(socket: &impl AsFd) -> io::Result<()> {
        // SAFETY: shutdown takes the borrowed descriptor and an integer.
        let rc = unsafe { libc::shutdown(socket.as_fd().as_raw_fd(), libc::SHUT_WR) };
        check(rc as libc::ssize_t).map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

    /// Who sends first: the other side reads to the end before it sends.
    #[derive(Clone, Copy, PartialEq)]
    enum Order {
        Together,
        SandboxFirst,
        UpstreamFirst,
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8 ^ seed)
            .collect()
    }

    /// Writes `data` and shuts for writing, then reads to the end; or the other way round.
    async fn side(
        mut s: impl AsyncRead + AsyncWrite + Unpin,
        data: Vec<u8>,
        wait_for_end: bool,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        if wait_for_end {
            s.read_to_end(&mut got).await.unwrap();
        }
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        if !wait_for_end {
            s.read_to_end(&mut got).await.unwrap();
        }
        got
    }

    /// Relays `out` bytes from the sandbox and `into` bytes from the upstream in `order`, and
    /// checks both arrive exactly, each after the other side's half-close, and the counts.
    async fn check(out: usize, into: usize, order: Order) {
        // A half-close not passed on leaves a side waiting for the end: a failure, not a hang.
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            exchange(out, into, order),
        )
        .await
        .expect("the relay finishes");
    }

    async fn exchange(out: usize, into: usize, order: Order) {
        let (sandbox, proxy_end) = UnixStream::pair().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let c = counts.clone();
        let relay = tokio::spawn(async move { relay(proxy_end, upstream, &c.0, &c.1).await });
        let (sent_out, sent_in) = (pattern(out, 1), pattern(into, 2));
        let (got_in, got_out) = tokio::join!(
            side(sandbox, sent_out.clone(), order == Order::UpstreamFirst),
            side(far, sent_in.clone(), order == Order::SandboxFirst),
        );
        relay.await.unwrap().unwrap();
        assert!(got_out == sent_out, "the upstream got other bytes");
        assert!(got_in == sent_in, "the sandbox got other bytes");
        let counted = (
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed),
        );
        assert_eq!(counted, (out as u64, into as u64));
    }

    #[tokio::test]
    async fn bytes_pass_exactly_both_ways_with_half_closes() {
        // Several times a pipe's size, odd lengths, and nothing at all one way.
        check(8 * PIPE_BYTES + 3, 5 * PIPE_BYTES + 1, Order::Together).await;
        check(7, 3 * PIPE_BYTES + 5, Order::SandboxFirst).await;
        check(3 * PIPE_BYTES + 5, 11, Order::UpstreamFirst).await;
        check(0, PIPE_BYTES, Order::SandboxFirst).await;
        check(PIPE_BYTES, 0, Order::UpstreamFirst).await;
        check(0, 0, Order::Together).await;
    }
}
