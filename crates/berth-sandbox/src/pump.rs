//! Moving a container's output into its output pipes.
//!
//! Two sources: the engine's attach stream (always attached; it carries stdin and anything the
//! shim prints before it redirects), and, when the engine is local, two FIFOs on a bind mount
//! that the shim makes the command's stdout and stderr. The FIFOs are read straight from the
//! host, so bulk output does not pass through the engine at all.

use std::io::ErrorKind;
use std::path::Path;

use berth_core::event::Stream;
use berth_engine::{EngineError, OutputChunk};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::output::OutputPipe;

const READ_CHUNK: usize = 128 * 1024;

/// The read ends of the stdout and stderr FIFOs.
pub struct Fifos {
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

impl Fifos {
    /// Opens the stdout and stderr FIFOs for reading. They are opened read-write so that they
    /// never report end-of-file while no writer is attached: the end is known from the command's
    /// exit instead, after which whatever is left in them is drained.
    pub fn open(stdout: &Path, stderr: &Path) -> std::io::Result<Self> {
        let open = |path: &Path| {
            pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(path)
        };
        Ok(Self {
            stdout: open(stdout)?,
            stderr: open(stderr)?,
        })
    }
}

/// Pumps until the attach stream has ended and, with FIFOs, until `exited` fired (or its
/// sender was dropped) and the FIFOs were drained. Returns why keeping the output failed, if
/// it did. Both pipes are finished either way.
pub async fn pump(
    mut attach: BoxStream<'static, Result<OutputChunk, EngineError>>,
    fifos: Option<Fifos>,
    mut exited: oneshot::Receiver<()>,
    stdout: &mut OutputPipe,
    stderr: &mut OutputPipe,
) -> Option<String> {
    let mut failure: Option<String> = None;
    let mut attach_open = true;
    let mut has_exited = fifos.is_none();
    let (mut fifo_out, mut fifo_err) = match fifos {
        Some(f) => (Some(f.stdout), Some(f.stderr)),
        None => (None, None),
    };
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    while failure.is_none() && (attach_open || !has_exited) {
        let fifo_ready = fifo_out.is_some() && !has_exited;
        tokio::select! {
            chunk = attach.next(), if attach_open => match chunk {
                Some(Ok(chunk)) => {
                    let pipe = match chunk.stream {
                        Stream::Stdout => &mut *stdout,
                        Stream::Stderr => &mut *stderr,
                    };
                    if let Err(e) = pipe.push(&chunk.data) {
                        failure = Some(format!("keeping the output failed: {e}"));
                    }
                }
                Some(Err(e)) => {
                    failure = Some(format!("the output stream broke: {e}"));
                }
                None => attach_open = false,
            },
            read = read_some(fifo_out.as_mut(), &mut out_buf), if fifo_ready => {
                failure = push_read(read, &out_buf, stdout);
            }
            read = read_some(fifo_err.as_mut(), &mut err_buf), if fifo_ready => {
                failure = push_read(read, &err_buf, stderr);
            }
            _ = &mut exited, if !has_exited => has_exited = true,
        }
    }
    // Every process of the container is gone: what is in the FIFOs is all there will be.
    for (receiver, pipe) in [
        (fifo_out.as_mut(), &mut *stdout),
        (fifo_err.as_mut(), &mut *stderr),
    ] {
        if let Some(receiver) = receiver {
            if let Err(e) = drain(receiver, pipe, &mut out_buf) {
                failure.get_or_insert(e);
            }
        }
    }
    for pipe in [stdout, stderr] {
        if let Err(e) = pipe.finish() {
            failure.get_or_insert(format!("keeping the output failed: {e}"));
        }
    }
    failure
}

async fn read_some(
    receiver: Option<&mut pipe::Receiver>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match receiver {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

fn push_read(read: std::io::Result<usize>, buf: &[u8], pipe: &mut OutputPipe) -> Option<String> {
    match read {
        Ok(n) => pipe
            .push(&buf[..n])
            .err()
            .map(|e| format!("keeping the output failed: {e}")),
        Err(e) => Some(format!("reading the command's output failed: {e}")),
    }
}

fn drain(
    receiver: &mut pipe::Receiver,
    pipe: &mut OutputPipe,
    buf: &mut [u8],
) -> Result<(), String> {
    loop {
        match receiver.try_read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => pipe
                .push(&buf[..n])
                .map_err(|e| format!("keeping the output failed: {e}"))?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the command's output failed: {e}")),
        }
    }
}
