//! Secrets in collected artifacts: masked in text files, reported in the others.
//!
//! A command may write a secret into `$BERTH_OUT` or another artifact; the output streams are
//! masked, and so must the files be that berth keeps under the run's `artifacts/`. This runs
//! after collection, on the run's artifacts directory, which berth owns and no sandbox can write.
//! Even so nothing in it is trusted to be what its name says: symlinks are never followed (not
//! as the file, not as a directory on the way to it), only regular files are read.
//!
//! A file holds a secret when the [`Masker`] finds one in any of its forms (the value, its
//! base64, hex or URL encodings). Then:
//!
//! - a *text* file is rewritten with every secret masked: streamed into a new file in the same
//!   directory (created exclusively, never through a link, with the original's permission bits),
//!   renamed over the original. Text means valid UTF-8 without a NUL byte: masking changes
//!   lengths, which is harmless in text and corrupts about every binary format, and every
//!   binary format worth the name has a NUL or an invalid UTF-8 sequence somewhere;
//! - any other file is left as it is and reported as flagged: the secret is in it in clear, and
//!   the run's record says so.
//!
//! Files are read in chunks, so memory stays bounded whatever their size.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_core::mask::Masker;

const CHUNK: usize = 64 * 1024;

/// What [`mask_artifacts`] did. Paths are relative to the artifacts directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArtifactMaskReport {
    /// Text files that held a secret and now hold it masked.
    pub masked: Vec<String>,
    /// Files that hold a secret but are not text: kept unchanged, the secret in clear.
    pub flagged_binary: Vec<String>,
    /// Files that could not be checked or rewritten, with why (`path: reason`). They may hold a
    /// secret in clear.
    pub errors: Vec<String>,
}

/// Checks each of `paths` (relative to `root`, as collection lists them) and masks the secrets
/// in it; see the module's docs. Paths that are not regular files (directories, kept symlinks)
/// are passed over.
pub fn mask_artifacts(root: &Path, paths: &[String], masker: &Masker) -> ArtifactMaskReport {
    let mut report = ArtifactMaskReport::default();
    if masker.is_empty() {
        return report;
    }
    let mut masker = masker.clone();
    for rel in paths {
        mask_one(root, Path::new(rel), &mut masker, &mut report);
    }
    report
}

/// [`mask_artifacts`] on every regular file under `root`, found by walking the tree without
/// following symlinks: for when the list of collected paths is not complete (collection lists a
/// limited number by name, and only names that are UTF-8 exactly).
pub fn mask_artifact_tree(root: &Path, masker: &Masker) -> ArtifactMaskReport {
    let mut report = ArtifactMaskReport::default();
    if masker.is_empty() {
        return report;
    }
    let mut masker = masker.clone();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(root.join(&dir)) {
            Ok(entries) => entries,
            Err(e) => {
                report.errors.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    report.errors.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            let rel = dir.join(entry.file_name());
            // The entry's own type, from the directory: a symlink is a symlink here.
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(rel),
                Ok(t) if t.is_file() => mask_one(root, &rel, &mut masker, &mut report),
                Ok(_) => {}
                Err(e) => report.errors.push(format!("{}: {e}", rel.display())),
            }
        }
    }
    report
}

fn mask_one(root: &Path, rel: &Path, masker: &mut Masker, report: &mut ArtifactMaskReport) {
    let name = rel.display().to_string();
    match check_and_mask(root, rel, masker) {
        Ok(Outcome::Clean) => {}
        Ok(Outcome::Masked) => report.masked.push(name),
        Ok(Outcome::Flagged) => report.flagged_binary.push(name),
        Err(e) => report.errors.push(format!("{name}: {e}")),
    }
}

/// Why one artifact could not be checked or masked.
#[derive(Debug, thiserror::Error)]
enum MaskError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("an empty path")]
    EmptyPath,
    #[error("not a plain relative path")]
    NotRelative,
    #[error("a directory on the way is a symlink or not a directory")]
    NotADirectory,
    #[error("creating the masked copy: {0}")]
    Temp(std::io::Error),
}

enum Outcome {
    /// No secret, or not a regular file.
    Clean,
    Masked,
    Flagged,
}

fn check_and_mask(root: &Path, rel: &Path, masker: &mut Masker) -> Result<Outcome, MaskError> {
    let path = resolve(root, rel)?;
    let mut file = match OpenOptions::new()
        .read(true)
        // Not through a link; a FIFO must not block the open (it is passed over below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        // The last component is a symlink: kept links point inside the tree, at files that
        // are checked under their own names.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Outcome::Clean),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Outcome::Clean);
    }

    // First pass: is there a secret, and is it text?
    masker.reset();
    let mut text = TextCheck::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_some(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        masker.detect(&buf[..n]);
        text.feed(&buf[..n]);
        if masker.hits() > 0 && !text.is_text_so_far() {
            // Decided: a secret in a file that is not text.
            break;
        }
    }
    let found = masker.finish_detect();
    if !found {
        return Ok(Outcome::Clean);
    }
    if !text.finish() {
        return Ok(Outcome::Flagged);
    }

    // Second pass: the masked copy beside the original, then renamed over it.
    file.seek(SeekFrom::Start(0))?;
    let dir = path.parent().unwrap_or(root);
    let (temp_path, mut temp) = create_temp(dir, meta.permissions().mode() & 0o777)?;
    let written = (|| -> Result<(), MaskError> {
        masker.reset();
        let mut out = Vec::with_capacity(CHUNK + masker.longest());
        loop {
            let n = read_some(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            out.clear();
            masker.push(&buf[..n], &mut out);
            temp.write_all(&out)?;
        }
        out.clear();
        masker.finish(&mut out);
        temp.write_all(&out)?;
        temp.sync_all()?;
        Ok(std::fs::rename(&temp_path, &path)?)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp_path);
        return Err(e);
    }
    Ok(Outcome::Masked)
}

/// `root/rel`, after checking that `rel` is a plain relative path and that no directory on the
/// way is a symlink (O_NOFOLLOW only covers the last component).
fn resolve(root: &Path, rel: &Path) -> Result<PathBuf, MaskError> {
    let mut path = root.to_path_buf();
    let components: Vec<_> = rel.components().collect();
    if components.is_empty() {
        return Err(MaskError::EmptyPath);
    }
    for (i, c) in components.iter().enumerate() {
        let Component::Normal(part) = c else {
            return Err(MaskError::NotRelative);
        };
        path.push(part);
        if i + 1 < components.len() {
            let meta = std::fs::symlink_metadata(&path)?;
            if !meta.is_dir() {
                return Err(MaskError::NotADirectory);
            }
        }
    }
    Ok(path)
}

fn create_temp(dir: &Path, mode: u32) -> Result<(PathBuf, File), MaskError> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    for _ in 0..8 {
        let path = dir.join(format!(".berth-mask-{:016x}.tmp", rand::random::<u64>()));
        match OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL: never an existing file, never through a link
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                // The original's bits, whatever the umask.
                if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode)) {
                    let _ = std::fs::remove_file(&path);
                    return Err(e.into());
                }
                return Ok((path, file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(MaskError::Temp(e)),
        }
    }
    Err(MaskError::Temp(last))
}

fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a stream is text (valid UTF-8, no NUL byte), fed in chunks of any size.
#[derive(Debug)]
struct TextCheck {
    text: bool,
    /// The start of a UTF-8 sequence that the last chunk cut (at most 3 bytes).
    carry: Vec<u8>,
}

impl Default for TextCheck {
    fn default() -> Self {
        Self {
            text: true,
            carry: Vec::new(),
        }
    }
}

impl TextCheck {
    fn feed(&mut self, chunk: &[u8]) {
        if !self.text {
            return;
        }
        if chunk.contains(&0) {
            self.text = false;
            return;
        }
        let joined;
        let data = if self.carry.is_empty() {
            chunk
        } else {
            joined = [self.carry.as_slice(), chunk].concat();
            &joined[..]
        };
        match std::str::from_utf8(data) {
            Ok(_) => self.carry.clear(),
            // Cut at the end of the chunk: the rest of the sequence may come next.
            Err(e) if e.error_len().is_none() => self.carry = data[e.valid_up_to()..].to_vec(),
            Err(_) => self.text = false,
        }
    }

    fn is_text_so_far(&self) -> bool {
        self.text
    }

    fn finish(&self) -> bool {
        self.text && self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    const SECRET: &str = "hunter22secret";

    fn masker() -> Masker {
        Masker::new(&[SECRET])
    }

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    fn read(root: &Path, rel: &str) -> Vec<u8> {
        std::fs::read(root.join(rel)).unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Names in `dir` that are not in `expected`: left-over temporary files.
    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".berth-mask-"))
            .collect()
    }

    #[test]
    fn text_with_a_secret_is_masked_in_place() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let cases: &[(&str, &[u8], &[u8])] = &[
            ("out/plain.txt", b"token=hunter22secret\n", b"token=***\n"),
            (
                "out/basic.log",
                b"Authorization: Basic dXNlcjpodW50ZXIyMnNlY3JldA==\n",
                b"Authorization: Basic dXNlcjp***\n",
            ),
            ("out/hex.txt", b"68756e7465723232736563726574", b"***"),
            (
                "out/utf8.txt",
                "é hunter22secret ü".as_bytes(),
                "é *** ü".as_bytes(),
            ),
        ];
        for (rel, data, _) in cases {
            write(root, rel, data);
        }
        std::fs::set_permissions(
            root.join("out/plain.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let paths: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
        let report = mask_artifacts(root, &paths, &masker());
        assert_eq!(report.masked, paths);
        assert!(
            report.flagged_binary.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        for (rel, _, expected) in cases {
            assert_eq!(read(root, rel), *expected, "{rel}");
        }
        let mode = std::fs::metadata(root.join("out/plain.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "the permission bits are kept");
        assert!(leftovers(&root.join("out")).is_empty());
    }

    #[test]
    fn a_secret_across_chunks_in_a_large_file() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let mut data = vec![b'x'; CHUNK - 5];
        data.extend_from_slice(SECRET.as_bytes());
        data.extend(vec![b'y'; 3 * CHUNK]);
        data.extend_from_slice(SECRET.as_bytes());
        write(root, "big.txt", &data);
        let report = mask_artifacts(root, &strings(&["big.txt"]), &masker());
        assert_eq!(report.masked, ["big.txt"]);
        let mut expected = vec![b'x'; CHUNK - 5];
        expected.extend_from_slice(b"***");
        expected.extend(vec![b'y'; 3 * CHUNK]);
        expected.extend_from_slice(b"***");
        assert!(read(root, "big.txt") == expected);
    }

    #[test]
    fn other_files_with_a_secret_are_flagged_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let cases: &[(&str, &[u8])] = &[
            ("nul.bin", b"\x00\x01hunter22secret\x00"),
            ("latin1.txt", b"caf\xe9 hunter22secret"),
            ("cut.txt", b"hunter22secret \xe2\x82"), // a UTF-8 sequence cut at the end
        ];
        for (rel, data) in cases {
            write(root, rel, data);
        }
        let paths: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
        let report = mask_artifacts(root, &paths, &masker());
        assert_eq!(report.flagged_binary, paths);
        assert!(
            report.masked.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        for (rel, data) in cases {
            assert_eq!(read(root, rel), *data, "{rel} is unchanged");
        }
    }

    #[test]
    fn files_without_a_secret_are_not_touched() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "a.txt", b"nothing to see, hunter22secre");
        write(root, "b.bin", b"\x00\x01\x02");
        write(root, "empty", b"");
        let before = std::fs::metadata(root.join("a.txt")).unwrap();
        let report = mask_artifacts(root, &strings(&["a.txt", "b.bin", "empty", "."]), &masker());
        assert!(
            report.masked.is_empty() && report.flagged_binary.is_empty(),
            "{report:?}"
        );
        let after = std::fs::metadata(root.join("a.txt")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino(), "not rewritten");
        assert!(leftovers(root).is_empty());
        // No secrets at all: nothing is even read.
        let none = Masker::new::<&str>(&[]);
        assert_eq!(
            mask_artifacts(root, &strings(&["missing"]), &none),
            ArtifactMaskReport::default()
        );
    }

    #[test]
    fn links_are_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = root.path();
        write(outside.path(), "target.txt", b"hunter22secret");
        write(outside.path(), "dir/inner.txt", b"hunter22secret");
        std::fs::create_dir(root.join("out")).unwrap();
        symlink(outside.path().join("target.txt"), root.join("out/link.txt")).unwrap();
        symlink(outside.path().join("dir"), root.join("out/dirlink")).unwrap();
        let paths = strings(&["out/link.txt", "out/dirlink", "out/dirlink/inner.txt"]);
        let report = mask_artifacts(root, &paths, &masker());
        assert!(
            report.masked.is_empty() && report.flagged_binary.is_empty(),
            "{report:?}"
        );
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(
            report.errors[0].starts_with("out/dirlink/inner.txt: "),
            "{report:?}"
        );
        assert_eq!(read(outside.path(), "target.txt"), b"hunter22secret");
        assert_eq!(read(outside.path(), "dir/inner.txt"), b"hunter22secret");
        assert!(std::fs::symlink_metadata(root.join("out/link.txt"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Paths that climb out are refused.
        let report = mask_artifacts(root, &strings(&["../x", "/etc/passwd"]), &masker());
        assert_eq!(report.errors.len(), 2, "{report:?}");
        // The walk does not follow them either.
        let report = mask_artifact_tree(root, &masker());
        assert_eq!(report, ArtifactMaskReport::default());
    }

    #[test]
    fn the_walk_finds_every_file() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "berth/out/a.txt", b"hunter22secret");
        write(root, "berth/out/deep/er/b.bin", b"\x00hunter22secret");
        write(root, "tmp/c.txt", b"clean");
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"odd\xff\nname");
        std::fs::write(root.join("tmp").join(odd), b"hunter22secret").unwrap();
        let mut report = mask_artifact_tree(root, &masker());
        report.masked.sort();
        assert_eq!(report.masked, ["berth/out/a.txt", "tmp/odd\u{fffd}\nname"]);
        assert_eq!(report.flagged_binary, ["berth/out/deep/er/b.bin"]);
        assert_eq!(read(root, "berth/out/a.txt"), b"***");
        assert_eq!(std::fs::read(root.join("tmp").join(odd)).unwrap(), b"***");
    }

    #[test]
    fn text_check_in_chunks() {
        for (data, text) in [
            (&b"plain"[..], true),
            ("é€𝄞".as_bytes(), true),
            (b"a\x00b", false),
            (b"\xff", false),
            (b"\xe2\x82", false),
        ] {
            for size in [1, 2, 3, 100] {
                let mut check = TextCheck::default();
                for part in data.chunks(size) {
                    check.feed(part);
                }
                assert_eq!(check.finish(), text, "{data:?} in chunks of {size}");
            }
        }
    }
}
