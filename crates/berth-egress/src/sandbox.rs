//! What the sandbox supplies — its connections, and any descriptor it sends along — and how the
//! proxy lets go of it.
//!
//! The sandbox chooses the options of every socket it hands over. A TCP socket with `SO_LINGER`
//! on and a send queue full toward a peer that never reads makes the last `close()` of it wait
//! in the kernel, for the linger time or until the peer goes away. A runtime worker waiting
//! there stalls the proxy and whatever else shares the runtime (the run's timeouts, a runner's
//! heartbeats). So:
//!
//! - every descriptor received gets `SO_LINGER` off at once, and again right before its last
//!   close (the sandbox may keep a copy and set it again);
//! - the last close of anything from the sandbox is made on the proxy's closing thread
//!   ([`Closer`]), never on a runtime worker: a connection keeps a copy of its descriptor
//!   ([`Last`]) beside the stream that serves it, so the stream's own close is never the last;
//! - a unix socket is shut for reading and drained there before it is closed, so descriptors
//!   still queued on it are received and neutralised, not released by the kernel inside the
//!   close; on `NAME.sock`, which carries bytes only, a descriptor ends the connection
//!   ([`Copied`]), and is received (not released by the kernel inside a read) on the way;
//! - a connection's permit (`Limits::max_connections`) is given back by the closing thread once
//!   what came with the connection is closed. A close the sandbox still manages to hold up (it
//!   can race the last `SO_LINGER` off through a copy of its own) then stalls only that thread,
//!   which is this proxy's (one run's), and no more connections' descriptors wait for it than
//!   the limit allows.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{ready, Context, Poll};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;

/// The most descriptors one message can carry (`SCM_MAX_FD`). A receive has room for all of
/// them: the kernel would release any that do not fit itself, on the receiving thread.
const MAX_FDS: usize = 253;

/// The most messages drained from one unix socket before it is closed anyway (once it is shut
/// for reading nothing new arrives, so this only bounds a very full queue).
const MAX_DRAINED: usize = 4096;

/// The proxy's closing thread: it makes the last close of what the sandbox supplied, then gives
/// back the connection's permit. It ends when the proxy and all its connections are gone.
#[derive(Clone)]
pub(crate) struct Closer(mpsc::Sender<Closing>);

struct Closing {
    fds: Vec<OwnedFd>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Closer {
    pub(crate) fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Closing>();
        std::thread::Builder::new()
            .name("berth-egress-close".into())
            .spawn(move || {
                for closing in rx {
                    close_all(closing.fds);
                    drop(closing.permit);
                }
            })?;
        Ok(Self(tx))
    }

    /// Closes `fds` on the closing thread, then drops `permit`.
    pub(crate) fn close(&self, fds: Vec<OwnedFd>, permit: Option<OwnedSemaphorePermit>) {
        if fds.is_empty() && permit.is_none() {
            return;
        }
        // The thread outlives every sender, so this does not fail; if it somehow did, what it
        // carries would be closed here instead.
        let _ = self.0.send(Closing { fds, permit });
    }
}

/// `SO_LINGER` off, so that a close does not wait for unsent data (on anything but a socket,
/// nothing happens).
pub(crate) fn neutralise(fd: BorrowedFd<'_>) {
    let _ = rustix::net::sockopt::set_socket_linger(fd, None);
}

/// The closing thread's work: each descriptor made non-lingering, a unix socket shut for
/// reading and drained (what was queued on it joins the work), then closed.
fn close_all(mut fds: Vec<OwnedFd>) {
    while let Some(fd) = fds.pop() {
        neutralise(fd.as_fd());
        if rustix::net::sockopt::socket_domain(&fd) == Ok(AddressFamily::UNIX) {
            let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Read);
            let mut buf = [0u8; 4096];
            for _ in 0..MAX_DRAINED {
                match receive(fd.as_fd(), &mut buf) {
                    Ok(r) if r.bytes == 0 && r.fds.is_empty() => break,
                    Ok(r) => fds.extend(r.fds),
                    Err(_) => break,
                }
            }
        }
        drop(fd);
    }
}

/// What one `recvmsg` got.
pub(crate) struct Received {
    pub(crate) bytes: usize,
    /// Received close-on-exec and made non-lingering.
    pub(crate) fds: Vec<OwnedFd>,
    /// Descriptors were lost (the process had no room for them).
    pub(crate) truncated: bool,
}

/// One `recvmsg` on `socket` without waiting: the bytes into `buf`, and the descriptors that
/// came with them.
pub(crate) fn receive(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    for fd in &fds {
        neutralise(fd.as_fd());
    }
    Ok(Received {
        bytes: got.bytes,
        fds,
        truncated: got.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// A connection's last descriptor and its permit, held beside the stream that serves it and
/// dropped after it: the stream's own close (on the runtime) is then never the last one, and
/// this one goes to the closing thread, with the permit.
pub(crate) struct Last {
    fd: Option<OwnedFd>,
    permit: Option<OwnedSemaphorePermit>,
    closer: Closer,
}

impl Last {
    /// A copy of `of`'s descriptor; `Err` when none can be made (the process is out of them).
    pub(crate) fn new(of: BorrowedFd<'_>, closer: &Closer) -> io::Result<Self> {
        Ok(Self {
            fd: Some(rustix::io::fcntl_dupfd_cloexec(of, 0)?),
            permit: None,
            closer: closer.clone(),
        })
    }

    /// Gives the connection's permit back only after the last close.
    pub(crate) fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }
}

impl Drop for Last {
    fn drop(&mut self) {
        let fds: Vec<OwnedFd> = self.fd.take().into_iter().collect();
        for fd in &fds {
            neutralise(fd.as_fd());
        }
        self.closer.close(fds, self.permit.take());
    }
}

/// A connection handed over through `NAME.handoff.sock`: the sandbox's own TCP socket.
pub(crate) struct Handed {
    // Dropped first: `last` then makes the last close, off the runtime.
    stream: TcpStream,
    last: Last,
}

impl Handed {
    pub(crate) fn new(stream: TcpStream, last: Last) -> Self {
        Self { stream, last }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Gives the connection's permit back only after the last close.
    pub(crate) fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.last.hold(permit);
    }
}

/// A connection to `NAME.sock`: the sandbox's bytes, copied in by the forwarder. It is read
/// with `recvmsg`, so that a descriptor sent along is received here (and closed on the closing
/// thread) instead of being released by the kernel inside the read; one ends the connection.
pub(crate) struct Copied {
    // Dropped first: `last` then makes the last close, off the runtime.
    stream: UnixStream,
    last: Last,
}

impl Copied {
    /// `None` when no copy of the descriptor can be made: the connection is then closed on the
    /// closing thread at once.
    pub(crate) fn new(
        stream: UnixStream,
        permit: OwnedSemaphorePermit,
        closer: &Closer,
    ) -> Option<Self> {
        match Last::new(stream.as_fd(), closer) {
            Ok(mut last) => {
                last.hold(permit);
                Some(Self { stream, last })
            }
            Err(e) => {
                tracing::warn!("egress: cannot keep a connection: {e}");
                let fds = stream.into_std().map(OwnedFd::from).into_iter().collect();
                closer.close(fds, Some(permit));
                None
            }
        }
    }

    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads into `buf` without waiting; a descriptor among the bytes is an error.
    pub(crate) fn read_bytes(&self, buf: &mut [u8]) -> io::Result<usize> {
        let got = receive(self.stream.as_fd(), buf)?;
        if got.fds.is_empty() && !got.truncated {
            return Ok(got.bytes);
        }
        self.last.closer.close(got.fds, None);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a descriptor was sent on a socket for bytes",
        ))
    }
}

impl AsyncRead for Copied {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match this
                .stream
                .try_io(Interest::READABLE, || this.read_bytes(unfilled))
            {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for Handed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

/// `AsFd` and `AsyncWrite` straight through to the stream.
macro_rules! through_to_stream {
    ($t:ty) => {
        impl AsFd for $t {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.stream.as_fd()
            }
        }

        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().stream).poll_flush(cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
            }
        }
    };
}

through_to_stream!(Handed);
through_to_stream!(Copied);
