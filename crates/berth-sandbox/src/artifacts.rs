//! Collecting what a run produced: `$BERTH_OUT` and every `--artifact` path.
//!
//! Artifacts mirror their container paths under the run's `artifacts/` directory
//! (`/berth/out/report.txt` lands in `artifacts/berth/out/report.txt`), so two artifacts can
//! never collide. Nothing coming out of a sandbox is trusted: both the tar streams from the engine
//! and the bind-mounted output directory go through berth-archive's safe extraction.

use std::path::{Path, PathBuf};

use berth_archive::{copy_tree_safely, extract_safely, Limits};
use berth_engine::Engine;
use bytes::Bytes;
use futures_util::StreamExt;

/// The most bytes of file content one run's output may bring back, `$BERTH_OUT` and every
/// `--artifact` together.
pub const RUN_OUTPUT_CAP: u64 = 4 << 30;
/// The most entries (files, directories, links) one run's output may bring back.
pub const RUN_ENTRY_CAP: u64 = 200_000;
/// How many collected paths (and how many left-out entries) the run record lists by name; the
/// rest are counted. The files themselves are all under `artifacts/`.
pub const LISTED_PATHS: usize = 1_000;

/// What collection produced: relative paths written and entries refused (with why), and what
/// the whole run has used of its output budget.
#[derive(Debug, Default)]
pub struct Collected {
    /// The first [`LISTED_PATHS`] paths written.
    pub paths: Vec<String>,
    /// Paths written beyond those listed.
    pub unlisted: u64,
    /// The first [`LISTED_PATHS`] entries left out, with why.
    pub skipped: Vec<String>,
    /// Entries left out beyond those listed.
    pub unlisted_skipped: u64,
    bytes: u64,
    entries: u64,
}

impl Collected {
    fn add(&mut self, under: &Path, extracted: berth_archive::Extracted) {
        self.bytes += extracted.bytes;
        self.entries += (extracted.files.len() + extracted.skipped.len()) as u64;
        for p in extracted.files {
            if self.paths.len() < LISTED_PATHS {
                self.paths.push(under.join(p).display().to_string());
            } else {
                self.unlisted += 1;
            }
        }
        for s in extracted.skipped {
            if self.skipped.len() < LISTED_PATHS {
                // The name is the sandbox's choice: never raw on a terminal or in a log line.
                let line = format!("{}: {}", s.path, s.reason);
                let line = berth_core::text::escape_untrusted(&line).into_owned();
                self.skipped.push(line);
            } else {
                self.unlisted_skipped += 1;
            }
        }
    }

    /// What is left of the run's output budget for the next collection.
    fn limits(&self) -> Limits {
        Limits {
            max_total_bytes: RUN_OUTPUT_CAP.saturating_sub(self.bytes),
            max_entries: RUN_ENTRY_CAP.saturating_sub(self.entries),
        }
    }
}

/// Why collecting an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] berth_archive::ArchiveError),
    #[error(transparent)]
    Download(#[from] berth_engine::EngineError),
    /// The blocking extraction did not finish (it panicked or was cancelled).
    #[error("{0}")]
    Extraction(#[from] tokio::task::JoinError),
}

impl ArtifactError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Copies the host side of `/berth/out` into `artifacts/berth/out`. The raw directory stays
/// until the container is gone: the engine needs every bind source to exist to serve the
/// container's files (artifact downloads, `docker cp` on a kept container).
pub fn collect_out_dir(
    out_dir: &Path,
    artifacts: &Path,
    collected: &mut Collected,
) -> Result<(), ArtifactError> {
    let dest_rel = PathBuf::from("berth/out");
    let dest = artifacts.join(&dest_rel);
    std::fs::create_dir_all(&dest).map_err(|e| ArtifactError::io(&dest, e))?;
    let extracted = copy_tree_safely(out_dir, &dest, &collected.limits())?;
    collected.add(&dest_rel, extracted);
    Ok(())
}

/// Removes the raw output directory once nothing needs it any more.
pub fn remove_out_dir(out_dir: &Path) -> Result<(), ArtifactError> {
    // remove_dir_all does not follow symlinks, so a planted link cannot redirect the removal.
    match std::fs::remove_dir_all(out_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArtifactError::io(out_dir, e)),
    }
}

/// Downloads `container_path` from the stopped container into `artifacts/`.
pub async fn collect_from_container<E: Engine>(
    engine: &E,
    container_id: &str,
    container_path: &str,
    artifacts: &Path,
    collected: &mut Collected,
) -> Result<(), ArtifactError> {
    let relative_parent = Path::new(container_path.trim_start_matches('/'))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dest = artifacts.join(&relative_parent);
    std::fs::create_dir_all(&dest).map_err(|e| ArtifactError::io(&dest, e))?;

    let extracted = download_tree(
        engine,
        container_id,
        container_path,
        dest,
        0,
        collected.limits(),
    )
    .await?;
    collected.add(&relative_parent, extracted);
    Ok(())
}

/// Downloads `container_path` through the archive API and extracts it safely under `dest`,
/// dropping `strip_components` leading names from every entry.
pub(crate) async fn download_tree<E: Engine>(
    engine: &E,
    container_id: &str,
    container_path: &str,
    dest: PathBuf,
    strip_components: usize,
    limits: Limits,
) -> Result<berth_archive::Extracted, ArtifactError> {
    // The tar stream is async; extraction is blocking file work. A small bounded channel
    // between them keeps memory flat however large the tree is.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(8);
    let extraction = tokio::task::spawn_blocking(move || {
        extract_safely(
            ChannelReader {
                rx,
                current: Bytes::new(),
            },
            &dest,
            strip_components,
            &limits,
        )
    });
    let mut stream = engine.download(container_id, container_path);
    let mut download_error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                if tx.send(bytes).is_err() {
                    break; // extraction stopped early; its error says why
                }
            }
            Err(e) => {
                download_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let extracted = extraction.await?;
    if let Some(e) = download_error {
        return Err(e.into());
    }
    Ok(extracted?)
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(bytes) => self.current = bytes,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Copies a host file or directory `source` to `dest` (local runs), under the same rules.
pub fn collect_host_path(
    source: &Path,
    dest: &Path,
    collected: &mut Collected,
) -> Result<(), ArtifactError> {
    let meta = std::fs::symlink_metadata(source).map_err(|e| ArtifactError::io(source, e))?;
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(|e| ArtifactError::io(parent, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest).map_err(|e| ArtifactError::io(dest, e))?;
        let extracted = copy_tree_safely(source, dest, &collected.limits())?;
        collected.add(dest, extracted);
    } else if meta.is_file() {
        std::fs::copy(source, dest).map_err(|e| ArtifactError::io(dest, e))?;
        collected.paths.push(dest.display().to_string());
    } else {
        collected.skipped.push(format!(
            "{}: not a regular file or directory",
            source.display()
        ));
    }
    Ok(())
}
