//! `extract_safely` against benign and hostile tar streams.
//!
//! Hostile entries are written with raw headers: `tar::Header::set_path` refuses `..` and
//! absolute names, which is exactly what a sandbox would send.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_archive::{extract_safely, ArchiveError, Extracted, Limits};
use tar::{EntryType, Header};
use tempfile::TempDir;

/// Builds a tar stream entry by entry, names written verbatim.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn raw(mut self, name: &[u8], kind: EntryType, mode: u32, link: &[u8], data: &[u8]) -> Self {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.raw(name.as_bytes(), EntryType::Regular, mode, b"", data)
    }

    fn dir(self, name: &str, mode: u32) -> Self {
        self.raw(name.as_bytes(), EntryType::Directory, mode, b"", b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
        )
    }

    fn hard_link(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
        )
    }

    fn special(self, name: &str, kind: EntryType) -> Self {
        self.raw(name.as_bytes(), kind, 0o644, b"", b"")
    }

    /// A GNU long-name record followed by the entry it names.
    fn gnu_long_file(self, name: &str, data: &[u8]) -> Self {
        let mut long = name.as_bytes().to_vec();
        long.push(0);
        self.raw(b"././@LongLink", EntryType::GNULongName, 0o644, b"", &long)
            .raw(b"truncated", EntryType::Regular, 0o644, b"", data)
    }

    /// A pax record setting `path`, followed by the entry it describes.
    fn pax_file(self, name: &str, data: &[u8]) -> Self {
        let body = format!(" path={name}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        self.raw(
            b"PaxHeader",
            EntryType::XHeader,
            0o644,
            b"",
            record.as_bytes(),
        )
        .raw(b"truncated", EntryType::Regular, 0o644, b"", data)
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A scratch area: `dest` is where extraction goes, `outside` is a sibling that must stay
/// untouched.
struct Scratch {
    _root: TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("parent/dest");
        let outside = root.path().join("outside");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        Scratch {
            dest,
            outside,
            _root: root,
        }
    }

    fn extract(&self, tar: Tar, strip: usize) -> Extracted {
        extract_safely(&tar.bytes()[..], &self.dest, strip, &Limits::default()).unwrap()
    }

    fn outside_is_empty(&self) -> bool {
        fs::read_dir(&self.outside).unwrap().next().is_none()
            && fs::read_dir(self.dest.parent().unwrap())
                .unwrap()
                .all(|e| e.unwrap().file_name() == "dest")
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn reason_for<'a>(out: &'a Extracted, path: &str) -> Option<&'a str> {
    out.skipped
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.reason.as_str())
}

fn paths(list: &[&str]) -> Vec<PathBuf> {
    list.iter().map(PathBuf::from).collect()
}

#[test]
fn files_dirs_and_modes_with_and_without_the_top_directory() {
    for (strip, root) in [(0, "out/"), (1, "")] {
        let scratch = Scratch::new();
        let tar = Tar::new()
            .dir("out/", 0o755)
            .dir("out/bin/", 0o750)
            .file("out/bin/run", 0o755, b"#!/bin/sh\n")
            .file("out/data.txt", 0o640, b"hello")
            .file("out/deep/er/x.txt", 0o600, b"implicit parents")
            .hard_link("out/copy", "out/data.txt");
        let out = scratch.extract(tar, strip);

        let d = |p: &str| scratch.dest.join(format!("{root}{p}"));
        assert_eq!(fs::read(d("bin/run")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::read(d("data.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(d("copy")).unwrap(), b"hello");
        assert_eq!(fs::read(d("deep/er/x.txt")).unwrap(), b"implicit parents");
        assert_eq!(mode(&d("bin")), 0o750);
        assert_eq!(mode(&d("bin/run")), 0o755);
        assert_eq!(mode(&d("data.txt")), 0o640);
        assert_eq!(mode(&d("deep/er/x.txt")), 0o600);
        assert!(fs::symlink_metadata(d("deep/er")).unwrap().is_dir());
        assert_eq!(out.bytes, 10 + 5 + 16);
        assert!(out.skipped.is_empty(), "{:?}", out.skipped);
        let expected: Vec<PathBuf> = [
            "bin",
            "bin/run",
            "data.txt",
            "deep",
            "deep/er",
            "deep/er/x.txt",
            "copy",
        ]
        .iter()
        .map(|p| PathBuf::from(format!("{root}{p}")))
        .collect();
        let mut files = out.files.clone();
        files.retain(|f| f != Path::new("out"));
        assert_eq!(files, expected);
        assert!(scratch.outside_is_empty());
    }
}

#[test]
fn names_leaving_the_destination_are_skipped() {
    let scratch = Scratch::new();
    let passwd_before = fs::read("/etc/passwd").ok();
    let absolute_target = scratch.outside.join("absolute");
    let cases = [
        ("/etc/passwd".to_string(), "absolute path"),
        (absolute_target.display().to_string(), "absolute path"),
        ("../escape1".into(), "contains `..`"),
        ("a/../../escape2".into(), "contains `..`"),
        ("./../escape3".into(), "contains `..`"),
        ("ok/../../../outside/escape4".into(), "contains `..`"),
    ];
    let mut tar = Tar::new();
    for (name, _) in &cases {
        tar = tar.file(name, 0o644, b"pwned");
    }
    let out = scratch.extract(tar.file("kept.txt", 0o644, b"fine"), 0);

    for (name, reason) in &cases {
        assert_eq!(reason_for(&out, name), Some(*reason), "{name}");
    }
    assert_eq!(out.skipped.len(), cases.len());
    assert_eq!(out.files, paths(&["kept.txt"]));
    assert_eq!(fs::read("/etc/passwd").ok(), passwd_before);
    assert!(!absolute_target.exists());
    assert!(scratch.outside_is_empty());
    // `a/..` must not even create `a`.
    assert_eq!(
        fs::read_dir(&scratch.dest).unwrap().count(),
        1,
        "only kept.txt in dest"
    );
}

#[test]
fn symlinks_are_kept_only_when_they_stay_inside() {
    let scratch = Scratch::new();
    // (name, target, kept, reason when skipped)
    let cases = [
        (
            "etc",
            "/etc",
            false,
            "symlink pointing outside the destination",
        ),
        (
            "a/up",
            "../../x",
            false,
            "symlink pointing outside the destination",
        ),
        (
            "top",
            "..",
            false,
            "symlink pointing outside the destination",
        ),
        (
            "sneaky",
            "a/../..",
            false,
            "symlink target has `..` after a name",
        ),
        ("empty", "", false, "symlink with an empty target"),
        ("rel", "data.txt", true, ""),
        ("a/sibling", "../data.txt", true, ""),
        ("a/b/deep", "../../data.txt", true, ""),
        ("a/here", ".", true, ""),
        ("dangling", "not/there", true, ""),
    ];
    let mut tar = Tar::new().file("data.txt", 0o644, b"data");
    for (name, target, _, _) in &cases {
        tar = tar.symlink(name, target);
    }
    let out = scratch.extract(tar, 0);

    for (name, target, kept, reason) in cases {
        let path = scratch.dest.join(name);
        if kept {
            assert_eq!(fs::read_link(&path).unwrap(), Path::new(target), "{name}");
            assert!(out.files.contains(&PathBuf::from(name)), "{name}");
        } else {
            assert!(
                fs::symlink_metadata(&path).is_err(),
                "{name} must not exist"
            );
            assert_eq!(reason_for(&out, name), Some(reason), "{name}");
        }
    }
    assert_eq!(fs::read(scratch.dest.join("a/b/deep")).unwrap(), b"data");
    assert!(scratch.outside_is_empty());
}

#[test]
fn entries_never_go_through_a_symlink_from_the_archive() {
    let scratch = Scratch::new();
    let target = scratch.outside.display().to_string();
    let tar = Tar::new()
        // Skipped (absolute), so `evil/pwned` lands in a real directory inside dest.
        .symlink("evil", &target)
        .file("evil/pwned", 0o644, b"pwned")
        // Kept (inside), but never written through.
        .dir("sub/", 0o755)
        .symlink("link", "sub")
        .file("link/file", 0o644, b"through")
        .dir("link/dir/", 0o755)
        .symlink("link/ln", "x")
        .file("real", 0o644, b"real")
        .hard_link("link/hl", "real");
    let out = scratch.extract(tar, 0);

    assert!(scratch.outside_is_empty());
    assert!(fs::symlink_metadata(scratch.dest.join("evil"))
        .unwrap()
        .is_dir());
    assert_eq!(fs::read(scratch.dest.join("evil/pwned")).unwrap(), b"pwned");
    assert_eq!(
        fs::read_link(scratch.dest.join("link")).unwrap(),
        Path::new("sub")
    );
    assert_eq!(fs::read_dir(scratch.dest.join("sub")).unwrap().count(), 0);
    for name in ["link/file", "link/dir/", "link/ln", "link/hl"] {
        assert_eq!(
            reason_for(&out, name),
            Some("would write through a symlink"),
            "{name}"
        );
    }
}

#[test]
fn symlinks_planted_in_the_destination_are_not_followed() {
    let scratch = Scratch::new();
    let victim = scratch.outside.join("victim.txt");
    fs::write(&victim, b"original").unwrap();
    let victim_mode = mode(&victim);
    std::os::unix::fs::symlink(&scratch.outside, scratch.dest.join("planted")).unwrap();
    std::os::unix::fs::symlink(&victim, scratch.dest.join("planted-file")).unwrap();
    std::os::unix::fs::symlink(&scratch.outside, scratch.dest.join("planted-dir")).unwrap();

    let tar = Tar::new()
        .file("planted/pwned", 0o644, b"pwned")
        .file("planted/deeper/pwned", 0o644, b"pwned")
        .file("planted-file", 0o600, b"replaced")
        .dir("planted-dir/", 0o777);
    let out = scratch.extract(tar, 0);

    assert_eq!(fs::read_dir(&scratch.outside).unwrap().count(), 1);
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert_eq!(mode(&victim), victim_mode);
    assert_eq!(
        reason_for(&out, "planted/pwned"),
        Some("would write through a symlink")
    );
    assert_eq!(
        reason_for(&out, "planted/deeper/pwned"),
        Some("would write through a symlink")
    );
    assert_eq!(
        reason_for(&out, "planted-dir/"),
        Some("exists and is not a directory")
    );
    // The planted link itself is replaced by a regular file, not written through.
    let replaced = scratch.dest.join("planted-file");
    assert!(fs::symlink_metadata(&replaced).unwrap().is_file());
    assert_eq!(fs::read(&replaced).unwrap(), b"replaced");
    assert!(fs::symlink_metadata(scratch.dest.join("planted-dir"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn hard_links_only_to_files_from_this_extraction() {
    let scratch = Scratch::new();
    fs::write(scratch.dest.join("preexisting"), b"not ours").unwrap();
    let passwd_before = fs::read("/etc/passwd").ok();
    let tar = Tar::new()
        .hard_link("passwd", "/etc/passwd")
        .hard_link("up", "../outside/x")
        .hard_link("early", "data.txt")
        .file("data.txt", 0o640, b"data")
        .hard_link("copy", "data.txt")
        .hard_link("nested/copy", "./data.txt")
        .hard_link("old", "preexisting")
        .dir("d/", 0o755)
        .hard_link("to-dir", "d")
        .symlink("sym", "data.txt")
        .hard_link("to-sym", "sym")
        .hard_link("self", "self");
    let out = scratch.extract(tar, 0);

    let cases = [
        ("passwd", Some("hard link to outside")),
        ("up", Some("hard link to outside")),
        ("early", Some("hard link to a file not extracted before it")),
        ("old", Some("hard link to a file not extracted before it")),
        (
            "to-dir",
            Some("hard link to a file not extracted before it"),
        ),
        (
            "to-sym",
            Some("hard link to a file not extracted before it"),
        ),
        ("self", Some("hard link to itself")),
        ("copy", None),
        ("nested/copy", None),
    ];
    for (name, reason) in cases {
        assert_eq!(reason_for(&out, name), reason, "{name}");
        assert_eq!(
            scratch.dest.join(name).exists(),
            reason.is_none(),
            "{name} exists?"
        );
    }
    let original = fs::metadata(scratch.dest.join("data.txt")).unwrap();
    let copy = fs::metadata(scratch.dest.join("nested/copy")).unwrap();
    assert_eq!(fs::read(scratch.dest.join("copy")).unwrap(), b"data");
    assert_eq!(original.ino(), copy.ino());
    assert_eq!(fs::read("/etc/passwd").ok(), passwd_before);
    assert!(scratch.outside_is_empty());
}

#[test]
fn rewriting_a_hard_linked_path_does_not_change_the_other_name() {
    let scratch = Scratch::new();
    let tar = Tar::new()
        .file("a", 0o644, b"first")
        .hard_link("b", "a")
        .file("a", 0o644, b"second");
    let out = scratch.extract(tar, 0);
    assert_eq!(fs::read(scratch.dest.join("a")).unwrap(), b"second");
    assert_eq!(fs::read(scratch.dest.join("b")).unwrap(), b"first");
    assert_eq!(out.files, paths(&["a", "b"]));
}

#[test]
fn devices_and_fifos_are_skipped() {
    let scratch = Scratch::new();
    let tar = Tar::new()
        .special("fifo", EntryType::Fifo)
        .special("dev/null", EntryType::Char)
        .special("sda", EntryType::Block)
        .special("weird", EntryType::new(b'Z'));
    let out = scratch.extract(tar, 0);
    for name in ["fifo", "dev/null", "sda"] {
        assert_eq!(reason_for(&out, name), Some("device or fifo"), "{name}");
        assert!(fs::symlink_metadata(scratch.dest.join(name)).is_err());
    }
    assert_eq!(reason_for(&out, "weird"), Some("unsupported entry type"));
    assert_eq!(fs::read_dir(&scratch.dest).unwrap().count(), 0);
}

#[test]
fn setuid_setgid_and_sticky_bits_are_cleared() {
    let scratch = Scratch::new();
    // (name, mode in the archive, mode on disk)
    let cases = [
        ("suid", 0o4755, 0o755),
        ("sgid", 0o2750, 0o750),
        ("both", 0o6777, 0o777),
        ("sticky-dir/", 0o1777, 0o777),
        ("sgid-dir/", 0o2755, 0o755),
        // Directories stay writable by us so extraction can continue.
        ("readonly-dir/", 0o555, 0o755),
        ("readonly", 0o444, 0o444),
    ];
    let mut tar = Tar::new();
    for (name, mode, _) in cases {
        tar = if name.ends_with('/') {
            tar.dir(name, mode)
        } else {
            tar.file(name, mode, b"x")
        };
    }
    scratch.extract(tar, 0);
    for (name, _, expected) in cases {
        assert_eq!(mode(&scratch.dest.join(name)), expected, "{name}");
    }
}

#[test]
fn long_names_from_gnu_and_pax_records() {
    let scratch = Scratch::new();
    let long = format!(
        "{}/file.txt",
        "d".repeat(40).repeat(4).replace("dddd", "dd/d")
    );
    assert!(long.len() > 100);
    let evil = format!("{}/{}", "a/".repeat(60), "../".repeat(70));
    let tar = Tar::new()
        .gnu_long_file(&long, b"gnu")
        .pax_file(&format!("pax/{long}"), b"pax")
        .gnu_long_file(&format!("{evil}escape-gnu"), b"pwned")
        .pax_file(&format!("{evil}escape-pax"), b"pwned")
        .pax_file(&format!("/{}/abs", "z".repeat(120)), b"pwned");
    let out = scratch.extract(tar, 0);

    assert_eq!(fs::read(scratch.dest.join(&long)).unwrap(), b"gnu");
    assert_eq!(
        fs::read(scratch.dest.join("pax").join(&long)).unwrap(),
        b"pax"
    );
    assert_eq!(
        reason_for(&out, &format!("{evil}escape-gnu")),
        Some("contains `..`")
    );
    assert_eq!(
        reason_for(&out, &format!("{evil}escape-pax")),
        Some("contains `..`")
    );
    assert_eq!(out.skipped.len(), 3);
    assert!(!scratch.dest.join("a").exists());
    assert!(scratch.outside_is_empty());
}

#[test]
fn the_same_name_twice() {
    let scratch = Scratch::new();
    let tar = Tar::new()
        .file("f", 0o600, b"one")
        .file("f", 0o644, b"two")
        .dir("d/", 0o755)
        .file("d", 0o644, b"not a dir")
        .symlink("d", "f")
        .file("g", 0o644, b"file")
        .dir("g/", 0o755)
        .file("g/child", 0o644, b"under a file")
        .dir("d/", 0o700);
    let out = scratch.extract(tar, 0);

    assert_eq!(fs::read(scratch.dest.join("f")).unwrap(), b"two");
    assert_eq!(mode(&scratch.dest.join("f")), 0o644);
    assert!(fs::symlink_metadata(scratch.dest.join("d"))
        .unwrap()
        .is_dir());
    assert_eq!(mode(&scratch.dest.join("d")), 0o700);
    assert_eq!(fs::read(scratch.dest.join("g")).unwrap(), b"file");
    let reasons: Vec<_> = out
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("d", "would replace a directory"),
            ("d", "would replace a directory"),
            ("g/", "exists and is not a directory"),
            ("g/child", "a parent is not a directory"),
        ]
    );
    assert_eq!(out.files, paths(&["f", "d", "g"]));
}

#[test]
fn over_the_limits_entries_are_left_out_by_name() {
    let tar = || {
        Tar::new()
            .file("a", 0o644, b"0123456789")
            .file("b", 0o644, b"0123456789")
            .file("c", 0o644, b"0123456789")
    };
    // (byte limit, entry limit, bytes written, names left out and why)
    type Case = (u64, u64, u64, &'static [(&'static str, &'static str)]);
    let cases: [Case; 4] = [
        (1_000, 3, 30, &[]),
        (30, 3, 30, &[]),
        (25, 3, 20, &[("c", berth_archive::BYTE_CAP)]),
        (1_000, 2, 20, &[("c", berth_archive::ENTRY_CAP)]),
    ];
    for (max_total_bytes, max_entries, bytes, left_out) in cases {
        let scratch = Scratch::new();
        let limits = Limits {
            max_total_bytes,
            max_entries,
        };
        let out = extract_safely(&tar().bytes()[..], &scratch.dest, 0, &limits).unwrap();
        assert_eq!(out.bytes, bytes, "{limits:?}");
        assert_eq!(out.skipped.len(), left_out.len(), "{:?}", out.skipped);
        for ((name, why), s) in left_out.iter().zip(&out.skipped) {
            assert_eq!(s.path, *name);
            assert!(s.reason.starts_with(why), "{}", s.reason);
        }
        assert!(scratch.dest.join("a").exists());
        assert_eq!(scratch.dest.join("c").exists(), left_out.is_empty());
    }
}

#[test]
fn skipped_entries_still_count_against_the_stream_limit() {
    let scratch = Scratch::new();
    // A skipped entry is not written, but its data is still read; the stream is bounded too.
    let tar = Tar::new().file("/abs", 0o644, &vec![b'x'; 3 << 20]);
    let limits = Limits {
        max_total_bytes: 0,
        max_entries: 1,
    };
    let err = extract_safely(&tar.bytes()[..], &scratch.dest, 0, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::LimitExceeded {
                what: "bytes of tar stream",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_top_level_file_with_strip_one_is_reported() {
    let scratch = Scratch::new();
    let out = scratch.extract(Tar::new().file("report.txt", 0o644, b"r"), 1);
    assert_eq!(
        reason_for(&out, "report.txt"),
        Some("nothing left after stripping components")
    );
    assert_eq!(fs::read_dir(&scratch.dest).unwrap().count(), 0);
}

#[test]
fn a_corrupt_stream_is_an_error() {
    let scratch = Scratch::new();
    let mut bytes = Tar::new().file("a", 0o644, b"data").bytes();
    bytes[0] ^= 0xff; // breaks the header checksum
    let err = extract_safely(&bytes[..], &scratch.dest, 0, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Tar(_)), "{err}");
    assert!(
        err.to_string().starts_with("cannot read the tar stream: "),
        "{err}"
    );

    let truncated = &Tar::new().file("a", 0o644, &[b'x'; 2000]).bytes()[..1024];
    let err = extract_safely(truncated, &scratch.dest, 0, &Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read the tar stream: the stream ends inside `a`"
    );
}

#[test]
fn the_destination_must_be_a_real_directory() {
    let scratch = Scratch::new();
    let link = scratch.outside.join("link-to-dest");
    std::os::unix::fs::symlink(&scratch.dest, &link).unwrap();
    let file = scratch.outside.join("file");
    fs::write(&file, b"").unwrap();
    let missing = scratch.outside.join("missing");
    let bytes = Tar::new().file("a", 0o644, b"a").bytes();

    for dest in [&link, &file] {
        let err = extract_safely(&bytes[..], dest, 0, &Limits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::BadDestination { .. }), "{err}");
        assert!(
            err.to_string().contains(&dest.display().to_string()),
            "{err}"
        );
    }
    let err = extract_safely(&bytes[..], &missing, 0, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!scratch.dest.join("a").exists());
}
