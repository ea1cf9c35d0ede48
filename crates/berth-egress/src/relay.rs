//! Tunnels: the bytes of a `CONNECT` or a raw TCP forward, both ways between the sandbox's
//! connection (its TCP socket handed over, or a unix socket from the forwarder) and the
//! upstream (a TCP socket), counted per direction.
//!
//! The bytes move with splice(2) through one pipe per direction: the kernel passes the socket
//! buffers' pages on, and nothing is copied into or out of this process. The proxy's hop then
//! costs about what the kernel's socket work costs (`bench/egress.py`). Each pipe holds at most
//! [`PIPE_BYTES`], so a tunnel buffers no more than the copy it replaces did. The one exception
//! is reading a unix socket from the forwarder: that goes through a buffer with `recvmsg`, since
//! a splice would release a descriptor the sandbox sent along inside the call, on the runtime
//! ([`crate::sandbox`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::sandbox::{Copied, Handed};
use crate::Tracker;

/// The most one direction of a tunnel holds in its pipe, and moves in one splice.
const PIPE_BYTES: usize = 256 << 10;

/// Tunnels a `CONNECT` after its `200`: `upgraded` is the sandbox's connection as hyper hands
/// it back. Bytes the client sent right after its request, which hyper has read already, go
/// upstream first.
pub(crate) async fn tunnel_upgraded(
    upgraded: Upgraded,
    upstream: TcpStream,
    tracker: &Arc<Tracker>,
) {
    // The sandbox's connection is whichever `serve_http` served: the forwarder's unix socket,
    // or the sandbox's own TCP connection handed over.
    let upgraded = match upgraded.downcast::<TokioIo<Copied>>() {
        Ok(parts) => {
            return tunnel_parts(parts.io.into_inner(), &parts.read_buf, upstream, tracker).await
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<Handed>>() {
        Ok(parts) => tunnel_parts(parts.io.into_inner(), &parts.read_buf, upstream, tracker).await,
        // Only if `serve_http` serves another kind of connection: a bug, said in the record.
        Err(_) => tracker.set(|r| r.error = Some("tunnel: an unknown kind of connection".into())),
    }
}

/// Sends what hyper had read past the request (`read_buf`) upstream first, then tunnels.
async fn tunnel_parts(
    client: impl Socket,
    read_buf: &[u8],
    mut upstream: TcpStream,
    tracker: &Arc<Tracker>,
) {
    if !read_buf.is_empty() {
        if let Err(e) = upstream.write_all(read_buf).await {
            note_error(tracker, &e);
            return;
        }
        tracker
            .bytes_out
            .fetch_add(read_buf.len() as u64, Ordering::Relaxed);
    }
    tunnel(client, upstream, tracker).await;
}

/// Moves bytes both ways until both directions have ended; the end of each direction is passed
/// on as a half-close, so one side can finish sending while the other goes on. The counts are
/// added as bytes are delivered (so they survive an error or an abort): `bytes_out` what reached
/// the upstream, `bytes_in` what reached the sandbox. A peer that resets or goes away is the
/// normal end of a tunnel, not an error.
pub(crate) async fn tunnel(client: impl Socket, upstream: TcpStream, tracker: &Arc<Tracker>) {
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
    client: impl Socket,
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
pub(crate) trait Socket: AsFd {
    /// Runs `f` when the socket is ready for `interest`, again after each `WouldBlock`.
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R>;

    /// Moves up to `len` bytes that arrived into `pipe`, which is empty and has room for `len`,
    /// without waiting.
    fn fill_pipe(&self, pipe: &OwnedFd, len: usize) -> io::Result<usize> {
        sys::splice(&self.as_fd(), pipe, len)
    }
}

impl Socket for TcpStream {
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.async_io(interest, f).await
    }
}

impl Socket for Handed {
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.stream().async_io(interest, f).await
    }
}

impl Socket for Copied {
    async fn io<R>(&self, interest: Interest, f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.stream().async_io(interest, f).await
    }

    /// Through a buffer with `recvmsg`, not splice(2): a splice from a unix socket would
    /// release a descriptor sent along inside it, on the runtime ([`crate::sandbox`]).
    fn fill_pipe(&self, pipe: &OwnedFd, len: usize) -> io::Result<usize> {
        let mut buf = [0u8; COPY_BYTES];
        let n = self.read_bytes(&mut buf[..len.min(COPY_BYTES)])?;
        if n > 0 {
            // The pipe is empty and has room: anything short of all of it is a bug, and must
            // not pass for `WouldBlock` (the bytes would be lost).
            let written = rustix::io::write(pipe, &buf[..n])
                .map_err(|e| io::Error::other(format!("tunnel: into the pipe: {e}")))?;
            if written != n {
                return Err(io::Error::other(
                    "tunnel: the pipe took less than it has room for",
                ));
            }
        }
        Ok(n)
    }
}

/// The most a copied connection moves into its pipe at a time.
const COPY_BYTES: usize = 64 << 10;

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
                from.fill_pipe(&pipe.write, pipe.room)
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
    /// What it holds, at most [`PIPE_BYTES`].
    room: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = sys::pipe()?;
        // A smaller pipe (over the user's pipe quota) still works, in smaller steps.
        let room = sys::set_pipe_size(&write, PIPE_BYTES)
            .or_else(|_| sys::pipe_size(&write))
            .unwrap_or(4096)
            .min(PIPE_BYTES);
        Ok(Self { read, write, room })
    }
}

/// The system calls, through rustix's safe wrappers (std has none for these).
mod sys {
    use super::*;
    use rustix::pipe::{PipeFlags, SpliceFlags};

    /// Moves up to `len` bytes from `from` to `to`, one of which is a pipe, without waiting.
    /// A socket whose peer has gone raises SIGPIPE, as write(2) does: Rust programs (berth and
    /// the benchmark's proxy) ignore it and get `EPIPE`.
    pub(super) fn splice(from: &impl AsFd, to: &impl AsFd, len: usize) -> io::Result<usize> {
        Ok(rustix::pipe::splice(
            from,
            None,
            to,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )?)
    }

    /// A new pipe: (read end, write end), non-blocking, close-on-exec.
    pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        Ok(rustix::pipe::pipe_with(
            PipeFlags::NONBLOCK | PipeFlags::CLOEXEC,
        )?)
    }

    pub(super) fn set_pipe_size(pipe: &OwnedFd, bytes: usize) -> io::Result<usize> {
        Ok(rustix::pipe::fcntl_setpipe_size(pipe, bytes)?)
    }

    pub(super) fn pipe_size(pipe: &OwnedFd) -> io::Result<usize> {
        Ok(rustix::pipe::fcntl_getpipe_size(pipe)?)
    }

    /// shutdown(SHUT_WR): the peer reads the end of this direction.
    pub(super) fn shutdown_write(socket: &impl AsFd) -> io::Result<()> {
        Ok(rustix::net::shutdown(socket, rustix::net::Shutdown::Write)?)
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
        // The sandbox's side as the proxy serves it: a connection to `NAME.sock`.
        let (sandbox, proxy_end) = tokio::net::UnixStream::pair().unwrap();
        let closer = crate::sandbox::Closer::start().unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        let proxy_end = Copied::new(proxy_end, permit, &closer).unwrap();
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
