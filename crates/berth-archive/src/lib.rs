//! Safe extraction of files that come out of a sandbox.
//!
//! Everything a sandbox produces is untrusted: a tar stream from the Docker archive API or a
//! directory that was bind-mounted into the container can hold absolute paths, `..`, symlinks
//! to host files, hard links, devices and FIFOs. The two entry points here write such content
//! under a destination directory with one set of rules:
//!
//! - nothing is ever written outside the destination; entries that try are skipped and
//!   reported in [`Extracted::skipped`], they do not fail the whole extraction;
//! - no symlink is ever followed while writing, neither one from the input nor one already in
//!   the destination: every parent must be a real directory and files are opened with
//!   `O_NOFOLLOW` and `O_CREAT | O_EXCL`;
//! - symlinks are kept only when relative and resolving inside the destination;
//! - hard links are kept only to regular files written earlier by the same call;
//! - devices, FIFOs and sockets are skipped;
//! - permission bits are kept, setuid, setgid and sticky bits are not, and nothing is chowned.
//!
//! The destination must be a directory owned by the running user that nobody else writes to
//! while the call runs: the checks inspect it and then act on it.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod beneath;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Limits for one extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file content written.
    pub max_total_bytes: u64,
    /// Entries read from the input, skipped ones included.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 4 << 30,
            max_entries: 200_000,
        }
    }
}

/// What an extraction wrote and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Paths relative to the destination that were written: files, directories (including
    /// parents created implicitly) and kept symlinks, each once, in the order first written.
    pub files: Vec<PathBuf>,
    /// Entries left out, with the reason.
    pub skipped: Vec<Skipped>,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// One entry that was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's name as in the input (lossy UTF-8).
    pub path: String,
    /// Why it was left out, e.g. "absolute path".
    pub reason: String,
}

/// Why an extraction stopped. Skipped entries are not errors; see [`Extracted::skipped`].
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read the tar stream: {0}")]
    Tar(io::Error),
    #[error("extraction exceeds its limit of {limit} {what}")]
    LimitExceeded { what: &'static str, limit: u64 },
    #[error("destination `{}` {reason}", path.display())]
    BadDestination { path: PathBuf, reason: &'static str },
    #[error("source `{}` {reason}", path.display())]
    BadSource { path: PathBuf, reason: &'static str },
}

const ABSOLUTE: &str = "absolute path";
const PARENT: &str = "contains `..`";
const SYMLINK_OUTSIDE: &str = "symlink pointing outside the destination";
const SYMLINK_UP_AFTER_NAME: &str = "symlink target has `..` after a name";
const SYMLINK_EMPTY: &str = "symlink with an empty target";
const HARD_LINK_OUTSIDE: &str = "hard link to outside";
const HARD_LINK_UNKNOWN: &str = "hard link to a file not extracted before it";
const HARD_LINK_SELF: &str = "hard link to itself";
const THROUGH_SYMLINK: &str = "would write through a symlink";
const PARENT_NOT_DIR: &str = "a parent is not a directory";
const REPLACE_DIR: &str = "would replace a directory";
const NOT_A_DIR: &str = "exists and is not a directory";
const SPECIAL: &str = "device or fifo";
const SPECIAL_OR_SOCKET: &str = "device, fifo or socket";
const UNSUPPORTED: &str = "unsupported entry type";
const EMPTY_AFTER_STRIP: &str = "nothing left after stripping components";
const CHANGED: &str = "changed while being copied";
/// Starts the reason of entries left out because the output cap is reached.
pub const BYTE_CAP: &str = "left out: over the output cap";
/// Starts the reason of entries left out because the entry cap is reached.
pub const ENTRY_CAP: &str = "left out: too many entries";

/// Extracts `reader` (a tar stream) under `dest`, which must exist and be a directory owned by
/// the running user.
///
/// `strip_components` drops that many leading names from every entry, like tar's
/// `--strip-components`: the Docker archive API puts the requested path's basename on top, so
/// pass 1 to unpack its contents directly into `dest` and 0 to keep it. Entries left with no
/// name (the top directory itself) are ignored.
///
/// On an error, whatever was written so far stays; the caller owns `dest` and cleans up.
pub fn extract_safely<R: Read>(
    reader: R,
    dest: &Path,
    strip_components: usize,
    limits: &Limits,
) -> Result<Extracted, ArchiveError> {
    check_destination(dest)?;
    let stream = CappedReader::new(reader, stream_cap(limits));
    let read_so_far = stream.read.clone();
    let stream_error = |e: io::Error| {
        if read_so_far.get() > stream_cap(limits) {
            ArchiveError::LimitExceeded {
                what: "bytes of tar stream",
                limit: stream_cap(limits),
            }
        } else {
            ArchiveError::Tar(e)
        }
    };
    let mut archive = tar::Archive::new(stream);
    let mut sink = Sink::new(dest, limits);
    for entry in archive.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        if !sink.take_entry() {
            sink.skip(
                String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                format!(
                    "{ENTRY_CAP}: the limit of {} entries is reached, this and every later entry are left out",
                    limits.max_entries
                ),
            );
            break;
        }
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // Metadata for the whole archive (pax), not a file.
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = match archive_path(&entry.path_bytes(), strip_components) {
            Ok(Some(rel)) => rel,
            Ok(None) if kind == tar::EntryType::Directory => continue,
            Ok(None) => {
                sink.skip(name, EMPTY_AFTER_STRIP);
                continue;
            }
            Err(reason) => {
                sink.skip(name, reason);
                continue;
            }
        };
        let outcome = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mode = entry.header().mode().map_err(ArchiveError::Tar)?;
                let size = entry.size();
                let before = sink.out.bytes;
                let outcome = sink.file(&rel, mode, Some(size), &mut entry, &stream_error)?;
                if matches!(outcome, Outcome::Written) && sink.out.bytes - before != size {
                    return Err(ArchiveError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the stream ends inside `{name}`"),
                    )));
                }
                outcome
            }
            tar::EntryType::Directory => {
                let mode = entry.header().mode().map_err(ArchiveError::Tar)?;
                sink.dir(&rel, mode)?
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                sink.symlink(&rel, Path::new(OsStr::from_bytes(&target)))?
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default();
                match archive_path(&target, strip_components) {
                    Ok(Some(target)) => sink.hard_link(&rel, &target)?,
                    Ok(None) | Err(_) => Outcome::Skipped(HARD_LINK_OUTSIDE.into()),
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                Outcome::Skipped(SPECIAL.into())
            }
            _ => Outcome::Skipped(UNSUPPORTED.into()),
        };
        if let Outcome::Skipped(reason) = outcome {
            sink.skip(name, reason);
        }
    }
    Ok(sink.out)
}

/// Copies the tree at `src` into `dest` under the same rules as [`extract_safely`]: regular
/// files and directories are copied (permission bits kept, setuid, setgid and sticky bits
/// cleared, holes of sparse files kept as holes), symlinks are kept only when relative and
/// resolving inside `dest`, everything else is skipped and reported.
///
/// `src` is a tree a sandbox could write. It is read only through directory handles, one name
/// at a time, never following a symlink (see [`beneath`]): a directory swapped for a symlink
/// while the copy runs is refused on open, not read through. `src` itself must be a real
/// directory whose parent the sandbox cannot write.
///
/// A file over the byte limit is left out and reported by name; the copy goes on with the
/// rest. Past the entry limit the copy stops, and the directory where it stopped is reported.
pub fn copy_tree_safely(
    src: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<Extracted, ArchiveError> {
    check_destination(dest)?;
    let root = match beneath::DirHandle::open(src) {
        Ok(root) => root,
        Err(e) if beneath::is_swapped(&e) => {
            return Err(ArchiveError::BadSource {
                path: src.to_path_buf(),
                reason: "is not a directory (symlinks are not followed)",
            })
        }
        Err(e) => return Err(io_error("open", src)(e)),
    };
    // Copying a tree into itself would keep finding what it just wrote.
    let dest_meta = fs::symlink_metadata(dest).map_err(io_error("inspect", dest))?;
    let src_meta = root.stat().map_err(io_error("inspect", src))?;
    if is_inside(dest, &dest_meta, src_meta.st_dev, src_meta.st_ino) {
        return Err(ArchiveError::BadSource {
            path: src.to_path_buf(),
            reason: "contains the destination",
        });
    }

    let mut sink = Sink::new(dest, limits);
    let mut pending = vec![(root, PathBuf::new())];
    'walk: while let Some((dir, dir_rel)) = pending.pop() {
        let names = match dir.names() {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                sink.skip(
                    lossy(&dir_rel),
                    "cannot read the directory: permission denied",
                );
                continue;
            }
            Err(e) => return Err(io_error("read", &src.join(&dir_rel))(e)),
        };
        for name in names {
            if !sink.take_entry() {
                sink.skip(
                    lossy(&dir_rel.join(&name)),
                    format!(
                        "{ENTRY_CAP}: the limit of {} entries is reached, this and every entry not yet copied are left out",
                        limits.max_entries
                    ),
                );
                break 'walk;
            }
            let rel = dir_rel.join(&name);
            let stat = match dir.stat_entry(&name) {
                Ok(stat) => stat,
                Err(e) if is_not_found(&e) => {
                    sink.skip(lossy(&rel), CHANGED);
                    continue;
                }
                Err(e) => return Err(io_error("inspect", &src.join(&rel))(e)),
            };
            let outcome = match beneath::file_type(&stat) {
                rustix::fs::FileType::Directory => match dir.open_dir_entry(&name) {
                    Ok(child) => {
                        let outcome = sink.dir(&rel, stat.st_mode)?;
                        if matches!(outcome, Outcome::Written) {
                            pending.push((child, rel.clone()));
                        }
                        outcome
                    }
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        Outcome::Skipped("cannot read the directory: permission denied".into())
                    }
                    Err(e) if beneath::is_swapped(&e) || is_not_found(&e) => {
                        Outcome::Skipped(CHANGED.into())
                    }
                    Err(e) => return Err(io_error("open", &src.join(&rel))(e)),
                },
                rustix::fs::FileType::RegularFile => copy_file(&mut sink, &dir, &name, &rel, src)?,
                rustix::fs::FileType::Symlink => match dir.read_link_entry(&name) {
                    Ok(target) => sink.symlink(&rel, &target)?,
                    Err(_) => Outcome::Skipped(CHANGED.into()),
                },
                _ => Outcome::Skipped(SPECIAL_OR_SOCKET.into()),
            };
            if let Outcome::Skipped(reason) = outcome {
                sink.skip(lossy(&rel), reason);
            }
        }
    }
    Ok(sink.out)
}

/// Whether the directory `dest` is the directory (`dev`, `ino`) or lies inside it, found by
/// walking up from `dest` (berth's own side, which no sandbox writes).
fn is_inside(dest: &Path, dest_meta: &fs::Metadata, dev: u64, ino: u64) -> bool {
    if dest_meta.dev() == dev && dest_meta.ino() == ino {
        return true;
    }
    let Ok(real) = fs::canonicalize(dest) else {
        return false;
    };
    real.ancestors()
        .skip(1)
        .any(|a| fs::metadata(a).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}

fn copy_file(
    sink: &mut Sink<'_>,
    dir: &beneath::DirHandle,
    name: &OsStr,
    rel: &Path,
    src: &Path,
) -> Result<Outcome, ArchiveError> {
    let mut file = match dir.open_file_entry(name) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Ok(Outcome::Skipped("cannot read: permission denied".into()))
        }
        Err(e) if beneath::is_swapped(&e) || is_not_found(&e) => {
            return Ok(Outcome::Skipped(CHANGED.into()))
        }
        Err(e) => return Err(io_error("open", &src.join(rel))(e)),
    };
    let path = src.join(rel);
    let meta = file.metadata().map_err(io_error("inspect", &path))?;
    sink.sparse_file(rel, meta.mode(), meta.len(), &mut file, &path)
}

/// Turns an archive entry name into a path relative to the destination.
///
/// `Ok(None)` when nothing is left after stripping; `Err` with the skip reason when the name
/// could leave the destination.
fn archive_path(raw: &[u8], strip: usize) -> Result<Option<PathBuf>, &'static str> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err(ABSOLUTE),
            Component::ParentDir => return Err(PARENT),
            Component::CurDir => {}
            Component::Normal(name) => names.push(name),
        }
    }
    let kept: PathBuf = names.into_iter().skip(strip).collect();
    Ok((!kept.as_os_str().is_empty()).then_some(kept))
}

/// Checks that a symlink at `link` (relative to the destination) pointing at `target` stays
/// inside the destination.
///
/// Only leading `..` are accepted: they climb through the link's parents, which are real
/// directories inside the destination, so lexical resolution is what the kernel will do. A
/// `..` after a name could climb out of another symlink (`d/x -> ..`, then `y -> d/x/..`).
fn check_symlink_target(link: &Path, target: &Path) -> Result<(), &'static str> {
    if target.as_os_str().is_empty() {
        return Err(SYMLINK_EMPTY);
    }
    let mut depth = link.components().count().saturating_sub(1);
    let mut after_name = false;
    for component in target.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err(SYMLINK_OUTSIDE),
            Component::CurDir => {}
            Component::ParentDir if after_name => return Err(SYMLINK_UP_AFTER_NAME),
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or(SYMLINK_OUTSIDE)?;
            }
            Component::Normal(_) => after_name = true,
        }
    }
    Ok(())
}

fn check_destination(dest: &Path) -> Result<(), ArchiveError> {
    let meta = fs::symlink_metadata(dest).map_err(io_error("inspect", dest))?;
    let reason = if !meta.file_type().is_dir() {
        "is not a directory (symlinks are not followed)"
    } else if meta.uid() != rustix::process::geteuid().as_raw() {
        "is not owned by the current user"
    } else {
        return Ok(());
    };
    Err(ArchiveError::BadDestination {
        path: dest.to_path_buf(),
        reason,
    })
}

/// Bound on the raw tar stream: file content plus room for headers, padding and long names.
/// The tar crate holds long-name and pax records in memory, so the stream as a whole needs a
/// bound, not only the file content.
fn stream_cap(limits: &Limits) -> u64 {
    limits
        .max_total_bytes
        .saturating_add(limits.max_entries.saturating_mul(4096))
        .saturating_add(1 << 20)
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl Fn(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn permissions(mode: u32) -> fs::Permissions {
    fs::Permissions::from_mode(mode & 0o777)
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

enum Outcome {
    Written,
    Skipped(String),
}

/// Writes entries under the destination, one at a time, applying the rules.
struct Sink<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    out: Extracted,
    entries: u64,
    listed: HashSet<PathBuf>,
    /// Regular files written by this call and still in place: the only hard-link targets.
    regular: HashSet<PathBuf>,
    buffer: Vec<u8>,
}

impl<'a> Sink<'a> {
    fn new(dest: &'a Path, limits: &'a Limits) -> Self {
        Sink {
            dest,
            limits,
            out: Extracted::default(),
            entries: 0,
            listed: HashSet::new(),
            regular: HashSet::new(),
            buffer: vec![0; 64 * 1024],
        }
    }

    /// Counts one more entry; false once the entry limit is used up.
    fn take_entry(&mut self) -> bool {
        self.entries += 1;
        self.entries <= self.limits.max_entries
    }

    fn over_cap(&self, size: u64) -> Outcome {
        Outcome::Skipped(format!(
            "{BYTE_CAP}: {size} bytes, and only {} of the limit of {} bytes are left",
            self.limits.max_total_bytes.saturating_sub(self.out.bytes),
            self.limits.max_total_bytes
        ))
    }

    /// Copies a regular file from a tree on this host, keeping its holes: only the data
    /// extents are read and written (`SEEK_DATA`/`SEEK_HOLE`), and only they count against the
    /// byte limit, so a sparse file costs what it really holds. At most `len` bytes are read,
    /// the size the file had when it was opened.
    fn sparse_file(
        &mut self,
        rel: &Path,
        mode: u32,
        len: u64,
        src: &mut fs::File,
        src_path: &Path,
    ) -> Result<Outcome, ArchiveError> {
        let extents = data_extents(src, len).map_err(io_error("read", src_path))?;
        let data: u64 = extents.iter().map(|(start, end)| end - start).sum();
        let remaining = self.limits.max_total_bytes.saturating_sub(self.out.bytes);
        if data > remaining {
            return Ok(self.over_cap(data));
        }
        if let Some(reason) = self.make_room(rel)? {
            return Ok(Outcome::Skipped(reason.into()));
        }
        let path = self.dest.join(rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_error("create", &path))?;
        let mut written = 0u64;
        for (start, end) in extents {
            src.seek(io::SeekFrom::Start(start))
                .map_err(io_error("read", src_path))?;
            file.seek(io::SeekFrom::Start(start))
                .map_err(io_error("write", &path))?;
            let mut part = (&mut *src).take(end - start);
            loop {
                let n = match part.read(&mut self.buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_error("read", src_path)(e)),
                };
                written += n as u64;
                file.write_all(&self.buffer[..n])
                    .map_err(io_error("write", &path))?;
            }
        }
        // The holes at the end, if any, are made by the length alone.
        file.set_len(len).map_err(io_error("write", &path))?;
        file.set_permissions(permissions(mode))
            .map_err(io_error("set permissions on", &path))?;
        self.out.bytes += written;
        self.record(rel);
        self.regular.insert(rel.to_path_buf());
        Ok(Outcome::Written)
    }

    fn skip(&mut self, path: String, reason: impl Into<String>) {
        self.out.skipped.push(Skipped {
            path,
            reason: reason.into(),
        });
    }

    fn record(&mut self, rel: &Path) {
        if self.listed.insert(rel.to_path_buf()) {
            self.out.files.push(rel.to_path_buf());
        }
    }

    /// Makes every parent of `rel` a real directory, creating missing ones. Returns the skip
    /// reason when a parent is a symlink or not a directory.
    fn prepare_parents(&mut self, rel: &Path) -> Result<Option<&'static str>, ArchiveError> {
        let Some(parent) = rel.parent() else {
            return Ok(None);
        };
        let mut prefix = PathBuf::new();
        for name in parent.components() {
            prefix.push(name);
            let path = self.dest.join(&prefix);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => return Ok(Some(THROUGH_SYMLINK)),
                Ok(_) => return Ok(Some(PARENT_NOT_DIR)),
                Err(e) if is_not_found(&e) => {
                    fs::create_dir(&path).map_err(io_error("create directory", &path))?;
                    self.record(&prefix);
                }
                Err(e) => return Err(io_error("inspect", &path)(e)),
            }
        }
        Ok(None)
    }

    /// Prepares the place of a non-directory entry: parents must be real directories and
    /// whatever non-directory is at the path is unlinked (never followed). Returns the skip
    /// reason when that is not possible.
    fn make_room(&mut self, rel: &Path) -> Result<Option<&'static str>, ArchiveError> {
        if let Some(reason) = self.prepare_parents(rel)? {
            return Ok(Some(reason));
        }
        let path = self.dest.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_dir() => Ok(Some(REPLACE_DIR)),
            Ok(_) => {
                fs::remove_file(&path).map_err(io_error("replace", &path))?;
                self.regular.remove(rel);
                Ok(None)
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(io_error("inspect", &path)(e)),
        }
    }

    fn file(
        &mut self,
        rel: &Path,
        mode: u32,
        size: Option<u64>,
        data: &mut dyn Read,
        read_error: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<Outcome, ArchiveError> {
        let remaining = self.limits.max_total_bytes.saturating_sub(self.out.bytes);
        let too_big = ArchiveError::LimitExceeded {
            what: "bytes",
            limit: self.limits.max_total_bytes,
        };
        if let Some(size) = size.filter(|size| *size > remaining) {
            return Ok(self.over_cap(size));
        }
        if let Some(reason) = self.make_room(rel)? {
            return Ok(Outcome::Skipped(reason.into()));
        }
        let path = self.dest.join(rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_error("create", &path))?;
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            written += n as u64;
            if written > remaining {
                return Err(too_big);
            }
            file.write_all(&self.buffer[..n])
                .map_err(io_error("write", &path))?;
        }
        // On the open handle, so no path lookup can be redirected.
        file.set_permissions(permissions(mode))
            .map_err(io_error("set permissions on", &path))?;
        self.out.bytes += written;
        self.record(rel);
        self.regular.insert(rel.to_path_buf());
        Ok(Outcome::Written)
    }

    fn dir(&mut self, rel: &Path, mode: u32) -> Result<Outcome, ArchiveError> {
        if let Some(reason) = self.prepare_parents(rel)? {
            return Ok(Outcome::Skipped(reason.into()));
        }
        let path = self.dest.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => return Ok(Outcome::Skipped(NOT_A_DIR.into())),
            Err(e) if is_not_found(&e) => {
                fs::create_dir(&path).map_err(io_error("create directory", &path))?;
            }
            Err(e) => return Err(io_error("inspect", &path)(e)),
        }
        // Opened without following, then changed through the handle. Owner bits stay so the
        // rest of the extraction (and later cleanup) can write into it.
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(&path)
            .map_err(io_error("open", &path))?;
        handle
            .set_permissions(permissions(mode | 0o700))
            .map_err(io_error("set permissions on", &path))?;
        self.record(rel);
        Ok(Outcome::Written)
    }

    fn symlink(&mut self, rel: &Path, target: &Path) -> Result<Outcome, ArchiveError> {
        if let Err(reason) = check_symlink_target(rel, target) {
            return Ok(Outcome::Skipped(reason.into()));
        }
        if let Some(reason) = self.make_room(rel)? {
            return Ok(Outcome::Skipped(reason.into()));
        }
        let path = self.dest.join(rel);
        std::os::unix::fs::symlink(target, &path).map_err(io_error("create symlink", &path))?;
        self.record(rel);
        Ok(Outcome::Written)
    }

    fn hard_link(&mut self, rel: &Path, target: &Path) -> Result<Outcome, ArchiveError> {
        if rel == target {
            return Ok(Outcome::Skipped(HARD_LINK_SELF.into()));
        }
        if !self.regular.contains(target) {
            return Ok(Outcome::Skipped(HARD_LINK_UNKNOWN.into()));
        }
        if let Some(reason) = self.make_room(rel)? {
            return Ok(Outcome::Skipped(reason.into()));
        }
        let original = self.dest.join(target);
        let path = self.dest.join(rel);
        // Only regular files written by this call are in `regular`, and a directory is never
        // replaced by a symlink, so `original` is a real file reached through real directories.
        fs::hard_link(&original, &path).map_err(io_error("create hard link", &path))?;
        self.record(rel);
        self.regular.insert(rel.to_path_buf());
        Ok(Outcome::Written)
    }
}

/// The data extents `(start, end)` of the first `len` bytes of `file`. A file system without
/// `SEEK_DATA` gives one extent covering everything.
fn data_extents(file: &mut fs::File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsFd;
    let mut extents = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let start = match rustix::fs::seek(file.as_fd(), rustix::fs::SeekFrom::Data(offset)) {
            Ok(start) => start,
            // No data after `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                return Ok(vec![(0, len)]);
            }
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = match rustix::fs::seek(file.as_fd(), rustix::fs::SeekFrom::Hole(start)) {
            Ok(end) => end.min(len),
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            break;
        }
        extents.push((start, end));
        offset = end;
        // A file made of many tiny extents is copied whole rather than tracked extent by extent.
        if extents.len() > 4096 {
            return Ok(vec![(0, len)]);
        }
    }
    Ok(extents)
}

/// Counts the bytes read from the tar stream and stops past `cap`.
struct CappedReader<R> {
    inner: R,
    cap: u64,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R> CappedReader<R> {
    fn new(inner: R, cap: u64) -> Self {
        CappedReader {
            inner,
            cap,
            read: std::rc::Rc::default(),
        }
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read.get() > self.cap {
            return Err(io::Error::other("the tar stream is larger than allowed"));
        }
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get().saturating_add(n as u64));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths() {
        // (entry name, strip, relative path or skip reason)
        type Case = (
            &'static str,
            usize,
            Result<Option<&'static str>, &'static str>,
        );
        let cases: &[Case] = &[
            ("a/b.txt", 0, Ok(Some("a/b.txt"))),
            ("./a//b/./c/", 0, Ok(Some("a/b/c"))),
            ("out/a/b", 1, Ok(Some("a/b"))),
            ("./out/a", 1, Ok(Some("a"))),
            ("out/", 1, Ok(None)),
            ("out", 2, Ok(None)),
            ("./", 0, Ok(None)),
            ("/etc/passwd", 0, Err(ABSOLUTE)),
            ("/etc/passwd", 1, Err(ABSOLUTE)),
            ("../escape", 0, Err(PARENT)),
            ("a/../../escape", 0, Err(PARENT)),
            ("a/..", 0, Err(PARENT)),
            ("out/../x", 1, Err(PARENT)),
            ("a/...", 0, Ok(Some("a/..."))),
            ("a/..b", 0, Ok(Some("a/..b"))),
        ];
        for (raw, strip, expected) in cases {
            let got = archive_path(raw.as_bytes(), *strip);
            let expected = expected.map(|o| o.map(PathBuf::from));
            assert_eq!(got, expected, "{raw} with strip {strip}");
        }
    }

    #[test]
    fn symlink_targets() {
        let cases: &[(&str, &str, Result<(), &str>)] = &[
            ("l", "file", Ok(())),
            ("l", "./file", Ok(())),
            ("l", "sub/file", Ok(())),
            ("l", ".", Ok(())),
            ("a/l", "..", Ok(())),
            ("a/l", "../b/file", Ok(())),
            ("a/b/l", "../../file", Ok(())),
            ("l", "..", Err(SYMLINK_OUTSIDE)),
            ("l", "../x", Err(SYMLINK_OUTSIDE)),
            ("a/l", "../../x", Err(SYMLINK_OUTSIDE)),
            ("l", "/etc", Err(SYMLINK_OUTSIDE)),
            ("a/l", "/a/file", Err(SYMLINK_OUTSIDE)),
            ("l", "d/x/..", Err(SYMLINK_UP_AFTER_NAME)),
            ("a/l", "sub/../../x", Err(SYMLINK_UP_AFTER_NAME)),
            ("l", "", Err(SYMLINK_EMPTY)),
        ];
        for (link, target, expected) in cases {
            assert_eq!(
                check_symlink_target(Path::new(link), Path::new(target)),
                *expected,
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_path() {
        let err = io_error("create", Path::new("/run/x/out/a"))(io::Error::from(
            io::ErrorKind::PermissionDenied,
        ));
        assert_eq!(
            err.to_string(),
            "cannot create `/run/x/out/a`: permission denied"
        );
        let err = ArchiveError::LimitExceeded {
            what: "entries",
            limit: 3,
        };
        assert_eq!(err.to_string(), "extraction exceeds its limit of 3 entries");
    }
}
