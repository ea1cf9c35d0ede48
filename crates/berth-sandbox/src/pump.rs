//! Moving a container's output into its output pipes.
//!
//! Two sources: the engine's attach stream (always attached; it carries stdin and anything the
//! shim prints before it redirects), and, when the engine is local, the command's stdout and
//! stderr on a bind mount, read straight from the host so bulk output does not pass through the
//! engine at all. A container of its own writes them to two files that berth tails (so the
//! command goes on when no berth reads, and a restarted runner can read them again); a held
//! container's runs write to two FIFOs.

use std::io::{ErrorKind, Read};
use std::path::Path;
use std::time::Duration;

use berth_core::event::Stream;
use berth_engine::{EngineError, OutputChunk};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::output::OutputPipe;

const READ_CHUNK: usize = 128 * 1024;

/// Where the command's stdout and stderr are read: the read ends of two FIFOs, or two files
/// being written.
pub struct Fifos {
    stdout: Source,
    stderr: Source,
}

enum Source {
    Fifo(pipe::Receiver),
    /// A file the command appends to, read from where the last read ended; at its end, read
    /// again after a short wait.
    File {
        file: std::fs::File,
        idle: Duration,
    },
}

/// The longest wait before a file being written is read again: the most a line can trail.
const TAIL_POLL: Duration = Duration::from_millis(10);

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
            stdout: Source::Fifo(open(stdout)?),
            stderr: Source::Fifo(open(stderr)?),
        })
    }

    /// Reads two files the command writes its stdout and stderr to, from their start.
    pub fn files(stdout: std::fs::File, stderr: std::fs::File) -> Self {
        let tail = |file| Source::File {
            file,
            idle: Duration::ZERO,
        };
        Self {
            stdout: tail(stdout),
            stderr: tail(stderr),
        }
    }
}

/// Why the output could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("keeping the output failed: {0}")]
    Keep(#[from] crate::SandboxError),
    #[error("the output stream broke: {0}")]
    Stream(#[from] EngineError),
    #[error("reading the command's output failed: {0}")]
    Read(#[from] std::io::Error),
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
) -> Option<PumpError> {
    let mut failure: Option<PumpError> = None;
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
                        failure = Some(e.into());
                    }
                }
                Some(Err(e)) => {
                    failure = Some(e.into());
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
            failure.get_or_insert(e.into());
        }
    }
    failure
}

/// The next bytes of `source`; waits until there are some. Cancel-safe: nothing is read
/// unless it is returned.
async fn read_some(source: Option<&mut Source>, buf: &mut [u8]) -> std::io::Result<usize> {
    match source {
        Some(Source::Fifo(r)) => r.read(buf).await,
        Some(Source::File { file, idle }) => loop {
            match file.read(buf) {
                Ok(0) => {
                    // Nothing new yet: look again soon, less often the longer it stays quiet.
                    *idle = (*idle * 2).clamp(Duration::from_millis(1), TAIL_POLL);
                    tokio::time::sleep(*idle).await;
                }
                Ok(n) => {
                    *idle = Duration::ZERO;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        },
        None => std::future::pending().await,
    }
}

fn push_read(read: std::io::Result<usize>, buf: &[u8], pipe: &mut OutputPipe) -> Option<PumpError> {
    match read {
        Ok(n) => pipe.push(&buf[..n]).err().map(PumpError::from),
        Err(e) => Some(e.into()),
    }
}

fn drain(source: &mut Source, pipe: &mut OutputPipe, buf: &mut [u8]) -> Result<(), PumpError> {
    loop {
        let read = match source {
            Source::Fifo(receiver) => receiver.try_read(buf),
            Source::File { file, .. } => file.read(buf),
        };
        match read {
            Ok(0) => return Ok(()),
            Ok(n) => pipe.push(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
