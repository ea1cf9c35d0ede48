//! Handed-over connections: the shim's forwarder may give the proxy the sandbox's TCP
//! connection itself, as a descriptor over `NAME.handoff.sock`, instead of copying its bytes
//! into `NAME.sock`. The proxy then reads and writes the sandbox's socket directly, and the
//! forwarder's hop (two copies through a unix socket) is gone (`bench/egress.py`).
//!
//! The exchange, one per connection: the forwarder sends the byte [`OFFER`] with exactly one
//! descriptor (`SCM_RIGHTS`); the proxy answers [`TAKEN`] and owns the connection from then on,
//! or [`REFUSED`] and closes, and the forwarder copies the connection through `NAME.sock` as
//! before. Where descriptors cannot cross (gVisor's host sockets, a socket forwarded over ssh),
//! the offer arrives without one, is refused, and the forwarder stops offering.
//!
//! Anything in the sandbox can connect here and send any descriptor it holds, so what arrives
//! is checked: one descriptor, a connected TCP stream socket, or nothing is taken. Serving such
//! a socket gives the sandbox nothing it does not have through `NAME.sock`: the same policy
//! decides, and the proxy only reads, writes and shuts it down. Nothing received here is closed
//! on the runtime: see [`crate::sandbox`] for why and how.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketType};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::sandbox::{self, Closer, Handed, Last};

/// The forwarder's offer: one byte, with the descriptor.
pub const OFFER: u8 = b'F';
/// The proxy's answer: the connection is the proxy's.
pub const TAKEN: u8 = b'+';
/// The proxy's answer: not taken; copy it through `NAME.sock`.
pub const REFUSED: u8 = b'-';

/// The socket name for handing `listener`'s connections over: `NAME.handoff.sock`.
pub fn socket_name(listener: &str) -> String {
    format!("{listener}.handoff.sock")
}

/// Receives one offer on `stream` within `timeout` and answers it. Returns the sandbox's
/// connection when it was taken, holding `permit` until its last close; `None` when it was
/// refused (the answer is sent) or the forwarder went away.
///
/// Nothing the sandbox sent is closed here, on the runtime ([`crate::sandbox`]): refused
/// descriptors, and this socket with whatever is still queued on it, go to `closer` (with
/// `permit` when nothing was taken).
pub(crate) async fn receive(
    mut stream: UnixStream,
    timeout: Duration,
    permit: OwnedSemaphorePermit,
    closer: &Closer,
) -> Option<Handed> {
    let offer = tokio::time::timeout(timeout, async {
        stream
            .async_io(Interest::READABLE, || receive_offer(&stream))
            .await
    })
    .await;
    let (offered, mut refused) = match offer {
        Ok(Ok(offer)) => offer,
        _ => (None, Vec::new()),
    };
    let mut taken = offered.and_then(|fd| match checked(&fd) {
        Ok(()) => take(fd, closer),
        Err(_) => {
            refused.push(fd);
            None
        }
    });
    let answer = if taken.is_some() { TAKEN } else { REFUSED };
    // An answer that cannot be sent: the forwarder is gone, and with it its offer's meaning;
    // a connection taken is still served (the sandbox's client is waiting on it).
    let _ = stream.write_all(&[answer]).await;
    // This socket is drained and closed on the closing thread, so that descriptors still
    // queued on it are neutralised there, not released by the kernel in a close here.
    match stream.into_std() {
        Ok(stream) => refused.push(OwnedFd::from(stream)),
        Err(e) => tracing::debug!("egress: handoff socket: {e}"),
    }
    let permit = match &mut taken {
        Some(handed) => {
            handed.hold(permit);
            None
        }
        None => Some(permit),
    };
    closer.close(refused, permit);
    taken
}

/// One `recvmsg`: the descriptor when the byte [`OFFER`] came with exactly one (and nothing was
/// lost), and every other descriptor received, to be closed.
fn receive_offer(stream: &UnixStream) -> io::Result<(Option<OwnedFd>, Vec<OwnedFd>)> {
    let mut byte = [0u8; 1];
    let mut got = sandbox::receive(stream.as_fd(), &mut byte)?;
    if got.bytes == 1 && byte[0] == OFFER && !got.truncated && got.fds.len() == 1 {
        Ok((got.fds.pop(), Vec::new()))
    } else {
        Ok((None, got.fds))
    }
}

/// What a handed-over descriptor must be: a connected TCP stream socket (IPv4 or IPv6).
fn checked(fd: &OwnedFd) -> Result<(), &'static str> {
    let stat = rustix::fs::fstat(fd).map_err(|_| "cannot stat")?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err("not a socket");
    }
    if rustix::net::sockopt::socket_type(fd) != Ok(SocketType::STREAM) {
        return Err("not a stream socket");
    }
    let domain = rustix::net::sockopt::socket_domain(fd).map_err(|_| "no domain")?;
    if domain != AddressFamily::INET && domain != AddressFamily::INET6 {
        return Err("not an internet socket");
    }
    if rustix::net::sockopt::socket_protocol(fd) != Ok(Some(rustix::net::ipproto::TCP)) {
        return Err("not TCP");
    }
    if !matches!(rustix::net::getpeername(fd), Ok(Some(_))) {
        return Err("not connected");
    }
    Ok(())
}

/// The checked descriptor as a connection of the runtime's, with its last copy kept for the
/// closing thread. `None` when it cannot be (the descriptor is then closed there).
fn take(fd: OwnedFd, closer: &Closer) -> Option<Handed> {
    let last = match Last::new(fd.as_fd(), closer) {
        Ok(last) => last,
        Err(_) => {
            closer.close(vec![fd], None);
            return None;
        }
    };
    // From here the copy in `last` keeps any close of `fd` below from being the last.
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true).ok()?;
    let _ = std.set_nodelay(true);
    let stream = TcpStream::from_std(std).ok()?;
    Some(Handed::new(stream, last))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::mem::MaybeUninit;
    use std::os::fd::BorrowedFd;
    use std::os::unix::net::UnixStream as StdUnix;

    /// Sends `byte` with `fds` as the forwarder would, from a blocking socket.
    fn offer(to: &StdUnix, byte: u8, fds: &[BorrowedFd<'_>]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            to,
            &[std::io::IoSlice::new(&[byte])],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    /// [`receive`] with a closing thread and a permit of its own.
    async fn receive_here(stream: UnixStream, timeout: Duration) -> Option<Handed> {
        let closer = Closer::start().unwrap();
        let permit = std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        receive(stream, timeout, permit, &closer).await
    }

    async fn exchange(byte: u8, fds: &[BorrowedFd<'_>]) -> (Option<Handed>, u8) {
        let (ours, theirs) = StdUnix::pair().unwrap();
        offer(&ours, byte, fds);
        theirs.set_nonblocking(true).unwrap();
        let taken = receive_here(
            UnixStream::from_std(theirs).unwrap(),
            Duration::from_secs(5),
        )
        .await;
        let mut answer = [0u8];
        (&ours).read_exact(&mut answer).unwrap();
        (taken, answer[0])
    }

    fn connected_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_connected_tcp_socket_is_taken_and_carries_the_bytes() {
        let (mut client, server) = connected_pair();
        let (taken, answer) = exchange(OFFER, &[server.as_fd()]).await;
        drop(server);
        assert_eq!(answer, TAKEN);
        let mut taken = taken.expect("taken");
        client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut taken, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"ping");
        taken.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
    }

    #[tokio::test]
    async fn anything_but_one_connected_tcp_socket_is_refused() {
        // The sandbox chooses what it sends: each of these is refused, and the proxy holds
        // none of the descriptors afterwards.
        let (_client, server) = connected_pair();
        let (_other_client, other_server) = connected_pair();
        let file = tempfile::tempfile().unwrap();
        let (unix_a, _unix_b) = StdUnix::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect("127.0.0.1:9").unwrap();
        let unconnected = unconnected_tcp();
        let cases: Vec<(&str, u8, Vec<BorrowedFd<'_>>)> = vec![
            ("no descriptor", OFFER, vec![]),
            ("another byte", b'G', vec![server.as_fd()]),
            (
                "two descriptors",
                OFFER,
                vec![server.as_fd(), other_server.as_fd()],
            ),
            ("a file", OFFER, vec![file.as_fd()]),
            ("a unix socket", OFFER, vec![unix_a.as_fd()]),
            ("a listening socket", OFFER, vec![listener.as_fd()]),
            ("a UDP socket", OFFER, vec![udp.as_fd()]),
            (
                "an unconnected TCP socket",
                OFFER,
                vec![unconnected.as_fd()],
            ),
        ];
        for (what, byte, fds) in cases {
            let (taken, answer) = exchange(byte, &fds).await;
            assert!(taken.is_none(), "{what}: taken");
            assert_eq!(answer, REFUSED, "{what}: not refused");
        }
    }

    /// A TCP socket that was never connected.
    fn unconnected_tcp() -> OwnedFd {
        rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap()
    }

    #[tokio::test]
    async fn a_silent_offer_is_refused_after_the_timeout() {
        let (ours, theirs) = StdUnix::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let taken = receive_here(
            UnixStream::from_std(theirs).unwrap(),
            Duration::from_millis(100),
        )
        .await;
        assert!(taken.is_none());
        let mut answer = [0u8];
        (&ours).read_exact(&mut answer).unwrap();
        assert_eq!(answer[0], REFUSED);
    }
}
