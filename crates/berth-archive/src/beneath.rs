//! Directory handles for trees a sandbox can write.
//!
//! A path inside such a tree is never resolved by the host as a string: a sandboxed process can
//! swap any component for a symlink between a check and a use. Instead a [`DirHandle`] holds an
//! open descriptor of a directory, and everything below it is reached relative to that
//! descriptor, one name at a time, never following a symlink:
//!
//! - multi-component paths go through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`; on kernels without `openat2` (before 5.6, or where
//!   a seccomp filter refuses it) a walk of `openat(O_NOFOLLOW)` per component does the same;
//! - new entries are made with `mkdirat`/`mkfifoat` and then opened without following, and their
//!   owner and mode are changed through that descriptor (`fchown`, `fchmod`), so a swap between
//!   the two calls changes nothing outside the tree;
//! - listing and removal work on descriptors too (`getdents`, `unlinkat`).
//!
//! Check and use happen on the same descriptor, so what was checked is what is used.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// An open directory, the root of (or a directory inside) a tree that may be hostile.
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
    /// Where it was when opened, for messages only: never used to reach it again.
    path: PathBuf,
}

/// Flags every directory open uses: never follow, never leak into children.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl DirHandle {
    /// Opens `path` as a tree's root. The path up to its parent is trusted (berth made it, in a
    /// directory no sandbox can write); the last component must be a real directory, not a
    /// symlink.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path this handle was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stat(&self) -> io::Result<Stat> {
        Ok(rustix::fs::fstat(&self.fd)?)
    }

    /// Opens the directory at `rel`, which must stay beneath this one with no symlink anywhere
    /// on the way.
    pub fn open_dir(&self, rel: &Path) -> io::Result<DirHandle> {
        let fd = self.resolve(rel, dir_flags())?;
        Ok(DirHandle {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Opens the regular file at `rel` for reading, under the same rules as [`Self::open_dir`].
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let fd = self.resolve(
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        )?;
        regular_file(fd)
    }

    /// The names in this directory (without `.` and `..`), sorted.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// What the entry `name` is, without following it.
    pub fn stat_entry(&self, name: &OsStr) -> io::Result<Stat> {
        let name = single_name(name)?;
        Ok(rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Opens the directory entry `name` (a real directory, never a symlink).
    pub fn open_dir_entry(&self, name: &OsStr) -> io::Result<DirHandle> {
        let name = single_name(name)?;
        let fd = rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty())?;
        Ok(DirHandle {
            fd,
            path: self.path.join(name),
        })
    }

    /// Opens the regular file `name` for reading. `O_NONBLOCK`: something swapped for a FIFO
    /// must not hang the open; the type is checked on the opened descriptor.
    pub fn open_file_entry(&self, name: &OsStr) -> io::Result<File> {
        let name = single_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        regular_file(fd)
    }

    /// The target of the symlink `name`.
    pub fn read_link_entry(&self, name: &OsStr) -> io::Result<PathBuf> {
        let name = single_name(name)?;
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// Makes the directory `name` here and opens it. Fails if anything is at `name` already.
    pub fn create_dir(&self, name: &OsStr, mode: u32) -> io::Result<DirHandle> {
        let name = single_name(name)?;
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode))?;
        let dir = self.open_dir_entry(name)?;
        // Set explicitly: mkdirat's mode passes through the umask.
        dir.chmod(mode)?;
        Ok(dir)
    }

    /// Opens the directory `name`, making it first if it is not there.
    pub fn open_or_create_dir(&self, name: &OsStr, mode: u32) -> io::Result<DirHandle> {
        match self.create_dir(name, mode) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.open_dir_entry(name),
            other => other,
        }
    }

    /// Makes the FIFO `name` here and returns it opened read-write (which never blocks on a
    /// FIFO), checked to be that FIFO, so its owner and mode can be set through the descriptor.
    pub fn create_fifo(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let name = single_name(name)?;
        rustix::fs::mkfifoat(&self.fd, name, Mode::from_raw_mode(mode))?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo {
            return Err(io::Error::other(format!(
                "{} changed while it was made",
                self.path.join(name).display()
            )));
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Creates the regular file `name` here, exclusively (nothing may be at `name`, not even a
    /// symlink), for writing.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let name = single_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Renames the entry `from` to `to`, both in this directory (replacing `to`).
    pub fn rename_entry(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (from, to) = (single_name(from)?, single_name(to)?);
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Changes the owner of this directory (through its descriptor).
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        chown_fd(self.fd.as_fd(), uid, gid)
    }

    /// Changes the mode of this directory (through its descriptor).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))?)
    }

    /// Removes the entry `name` and, if it is a directory, everything in it, never following a
    /// symlink. Missing is not an error.
    pub fn remove_entry_all(&self, name: &OsStr) -> io::Result<()> {
        let name = single_name(name)?;
        let stat = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            match self.open_dir_entry(name) {
                Ok(dir) => {
                    for child in dir.names()? {
                        dir.remove_entry_all(&child)?;
                    }
                }
                // Swapped for something else since: removed below as that.
                Err(e) if is_swapped(&e) => {}
                Err(e) => return Err(e),
            }
            match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
                Err(rustix::io::Errno::NOTDIR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves `rel` beneath this directory without following any symlink.
    fn resolve(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        check_relative(rel)?;
        let how = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), how) {
            // No openat2 (old kernel, or refused by a seccomp filter): walk instead.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => self.walk(rel, flags),
            // openat2 may return EAGAIN when a rename raced it; the walk gives a definite answer.
            Err(rustix::io::Errno::AGAIN) => self.walk(rel, flags),
            other => Ok(other?),
        }
    }

    /// The fallback of [`Self::resolve`]: one `openat(O_NOFOLLOW)` per component, each relative
    /// to the directory opened before it.
    fn walk(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let names: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some((last, parents)) = names.split_last() else {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, Mode::empty())?);
        };
        let mut current: Option<OwnedFd> = None;
        for name in parents {
            let base: BorrowedFd<'_> = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let next = rustix::fs::openat(base, *name, dir_flags(), Mode::empty())?;
            current = Some(next);
        }
        let base: BorrowedFd<'_> = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        Ok(rustix::fs::openat(base, *last, flags, Mode::empty())?)
    }
}

impl AsFd for DirHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Changes the owner of an open file or directory.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY-free: rustix wraps the raw ids.
    let uid = rustix::fs::Uid::from_raw(uid);
    let gid = rustix::fs::Gid::from_raw(gid);
    Ok(rustix::fs::fchown(fd, Some(uid), Some(gid))?)
}

/// Whether an open failed because the entry is (now) a symlink or not the expected type: the
/// tree changed under us, or was built to trap us.
pub fn is_swapped(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV | libc::ENXIO)
    ) || e.kind() == io::ErrorKind::InvalidData
}

fn regular_file(fd: OwnedFd) -> io::Result<File> {
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(File::from(fd))
}

/// A name of one entry: no `/`, not `.` or `..`, not empty.
fn single_name(name: &OsStr) -> io::Result<&OsStr> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a single file name", name.to_string_lossy()),
        ));
    }
    Ok(name)
}

fn check_relative(rel: &Path) -> io::Result<()> {
    for component in rel.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    Ok(())
}

/// The type of an entry from its `Stat`.
pub fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};

    #[test]
    fn resolution_never_follows_a_symlink_or_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        symlink(dir.path(), root.join("up")).unwrap();
        symlink("b", root.join("a/lb")).unwrap();
        let h = DirHandle::open(&root).unwrap();
        assert!(h.open_file(Path::new("a/b/f")).is_ok());
        for bad in [
            "up/secret",
            "a/lb/f",
            "../secret",
            "/etc/passwd",
            "a/../../secret",
        ] {
            let e = h.open_file(Path::new(bad)).unwrap_err();
            assert!(is_swapped(&e), "{bad}: {e}");
        }
        // The walk gives the same answers as openat2.
        for bad in ["up/secret", "a/lb/f"] {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW;
            assert!(h.walk(Path::new(bad), flags).is_err(), "{bad}");
        }
        assert!(h.walk(Path::new("a/b/f"), OFlags::RDONLY).is_ok());
        // A root that is itself a symlink is refused.
        assert!(DirHandle::open(&root.join("up")).is_err());
    }

    #[test]
    fn entries_are_made_and_removed_through_handles() {
        let dir = tempfile::tempdir().unwrap();
        let h = DirHandle::open(dir.path()).unwrap();
        let sub = h.create_dir(OsStr::new("sub"), 0o750).unwrap();
        assert_eq!(sub.stat().unwrap().st_mode & 0o777, 0o750);
        let fifo = sub.create_fifo(OsStr::new("p"), 0o620).unwrap();
        let meta = fifo.metadata().unwrap();
        assert!(meta.file_type().is_fifo() && meta.permissions().mode() & 0o777 == 0o620);
        assert!(h.create_dir(OsStr::new("sub"), 0o700).is_err());
        std::fs::write(dir.path().join("outside"), "keep").unwrap();
        symlink(dir.path().join("outside"), dir.path().join("sub/link")).unwrap();
        assert!(h.open_dir_entry(OsStr::new("../x")).is_err());
        h.remove_entry_all(OsStr::new("sub")).unwrap();
        assert!(!dir.path().join("sub").exists());
        assert_eq!(std::fs::read(dir.path().join("outside")).unwrap(), b"keep");
        assert_eq!(h.names().unwrap(), vec![OsString::from("outside")]);
    }
}
