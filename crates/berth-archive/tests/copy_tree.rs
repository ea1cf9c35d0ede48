//! `copy_tree_safely` against a hostile output directory.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_archive::{copy_tree_safely, ArchiveError, Extracted, Limits};
use tempfile::TempDir;

/// `src` is the untrusted tree, `dest` the run directory, `outside` a sibling holding a
/// secret and a victim that must stay untouched.
struct Scratch {
    _root: TempDir,
    src: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        let dest = root.path().join("dest");
        let outside = root.path().join("outside");
        for dir in [&src, &dest, &outside] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(outside.join("secret"), b"host secret").unwrap();
        Scratch {
            src,
            dest,
            outside,
            _root: root,
        }
    }

    fn src(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    fn dest(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }

    fn file(&self, rel: &str, mode: u32, data: &[u8]) {
        let path = self.src(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn copy(&self) -> Extracted {
        copy_tree_safely(&self.src, &self.dest, &Limits::default()).unwrap()
    }

    fn outside_untouched(&self) -> bool {
        fs::read_dir(&self.outside).unwrap().count() == 1
            && fs::read(self.outside.join("secret")).unwrap() == b"host secret"
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn reasons(out: &Extracted) -> Vec<(&str, &str)> {
    let mut list: Vec<_> = out
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    list.sort();
    list
}

#[test]
fn copies_files_dirs_and_inside_symlinks_and_skips_the_rest() {
    let s = Scratch::new();
    s.file("top.txt", 0o4755, b"top");
    s.file("a/b/c.txt", 0o640, b"deep");
    fs::create_dir(s.src("empty")).unwrap();
    fs::set_permissions(s.src("empty"), fs::Permissions::from_mode(0o2750)).unwrap();
    symlink("a/b/c.txt", s.src("in-tree")).unwrap();
    symlink("../top.txt", s.src("a/up")).unwrap();
    symlink("/etc/passwd", s.src("passwd")).unwrap();
    symlink(s.outside.join("secret"), s.src("a/secret")).unwrap();
    symlink("../../outside/secret", s.src("a/escape")).unwrap();
    symlink(&s.outside, s.src("outside-dir")).unwrap();
    mkfifo(&s.src("a/b/pipe"));
    let _socket = std::os::unix::net::UnixListener::bind(s.src("sock")).unwrap();

    let out = s.copy();

    assert_eq!(fs::read(s.dest("top.txt")).unwrap(), b"top");
    assert_eq!(mode(&s.dest("top.txt")), 0o755, "setuid cleared");
    assert_eq!(fs::read(s.dest("a/b/c.txt")).unwrap(), b"deep");
    assert_eq!(mode(&s.dest("a/b/c.txt")), 0o640);
    assert!(fs::symlink_metadata(s.dest("empty")).unwrap().is_dir());
    assert_eq!(mode(&s.dest("empty")), 0o750, "setgid cleared");
    assert_eq!(
        fs::read_link(s.dest("in-tree")).unwrap(),
        Path::new("a/b/c.txt")
    );
    assert_eq!(fs::read(s.dest("in-tree")).unwrap(), b"deep");
    assert_eq!(
        fs::read_link(s.dest("a/up")).unwrap(),
        Path::new("../top.txt")
    );
    for skipped in [
        "passwd",
        "a/secret",
        "a/escape",
        "outside-dir",
        "a/b/pipe",
        "sock",
    ] {
        assert!(fs::symlink_metadata(s.dest(skipped)).is_err(), "{skipped}");
    }
    assert_eq!(
        reasons(&out),
        [
            ("a/b/pipe", "device, fifo or socket"),
            ("a/escape", "symlink pointing outside the destination"),
            ("a/secret", "symlink pointing outside the destination"),
            ("outside-dir", "symlink pointing outside the destination"),
            ("passwd", "symlink pointing outside the destination"),
            ("sock", "device, fifo or socket"),
        ]
    );
    let mut files = out.files.clone();
    files.sort();
    let expected: Vec<PathBuf> = [
        "a",
        "a/b",
        "a/b/c.txt",
        "a/up",
        "empty",
        "in-tree",
        "top.txt",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(files, expected);
    assert_eq!(out.bytes, 3 + 4);
    assert!(s.outside_untouched());
    // The source is left as it was.
    assert!(s.src("a/b/pipe").exists());
}

#[test]
fn symlinked_directories_are_not_descended() {
    let s = Scratch::new();
    s.file("real/inner.txt", 0o644, b"inner");
    symlink("real", s.src("alias")).unwrap();
    symlink(&s.outside, s.src("host")).unwrap();

    let out = s.copy();

    assert_eq!(fs::read_link(s.dest("alias")).unwrap(), Path::new("real"));
    assert_eq!(fs::read_dir(s.dest("real")).unwrap().count(), 1);
    assert!(fs::symlink_metadata(s.dest("host")).is_err());
    let mut files = out.files.clone();
    files.sort();
    assert_eq!(
        files,
        ["alias", "real", "real/inner.txt"].map(PathBuf::from)
    );
    assert!(s.outside_untouched());
}

#[test]
fn symlinks_planted_in_the_destination_are_not_followed() {
    let s = Scratch::new();
    s.file("sub/file", 0o644, b"pwned");
    s.file("victim", 0o644, b"replaced");
    symlink(&s.outside, s.dest("sub")).unwrap();
    symlink(s.outside.join("secret"), s.dest("victim")).unwrap();

    let out = s.copy();

    assert!(s.outside_untouched());
    assert_eq!(reasons(&out), [("sub", "exists and is not a directory")]);
    assert!(fs::symlink_metadata(s.dest("victim")).unwrap().is_file());
    assert_eq!(fs::read(s.dest("victim")).unwrap(), b"replaced");
}

#[test]
fn the_source_must_be_a_real_directory_outside_the_destination() {
    let s = Scratch::new();
    let link = s.outside.join("src-link");
    symlink(&s.src, &link).unwrap();
    let nested_dest = s.src("nested");
    fs::create_dir(&nested_dest).unwrap();

    let cases = [
        (
            &link,
            &s.dest,
            "is not a directory (symlinks are not followed)",
        ),
        (&s.src, &nested_dest, "contains the destination"),
        (&s.src, &s.src, "contains the destination"),
    ];
    for (src, dest, reason) in cases {
        let err = copy_tree_safely(src, dest, &Limits::default()).unwrap_err();
        match &err {
            ArchiveError::BadSource { path, reason: got } => {
                assert_eq!(path, src);
                assert_eq!(*got, reason);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains(&src.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(fs::read_dir(&s.dest).unwrap().count(), 0);
    let outside_dest = s.outside.join("dest-link");
    symlink(&s.dest, &outside_dest).unwrap();
    let err = copy_tree_safely(&s.src, &outside_dest, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::BadDestination { .. }), "{err}");
}

#[test]
fn limits_stop_the_copy() {
    // (limits, expected error)
    let cases = [
        (
            Limits {
                max_total_bytes: 10,
                max_entries: 100,
            },
            None,
        ),
        (
            Limits {
                max_total_bytes: 9,
                max_entries: 100,
            },
            Some(("bytes", 9)),
        ),
        (
            Limits {
                max_total_bytes: 100,
                max_entries: 2,
            },
            Some(("entries", 2)),
        ),
    ];
    for (limits, expected) in cases {
        let s = Scratch::new();
        s.file("d/a", 0o644, b"12345");
        s.file("d/b", 0o644, b"12345");
        let out = copy_tree_safely(&s.src, &s.dest, &limits).unwrap();
        match expected {
            None => {
                assert_eq!(out.bytes, 10);
                assert_eq!(fs::read(s.dest("d/b")).unwrap(), b"12345");
                assert!(out.skipped.is_empty());
            }
            Some((what, _)) => {
                // Never dropped silently: what did not fit is named, with the limit.
                assert!(!s.dest("d/b").exists());
                let left_out = out.skipped.last().unwrap();
                assert_eq!(left_out.path, "d/b");
                let cap = if what == "bytes" {
                    berth_archive::BYTE_CAP
                } else {
                    berth_archive::ENTRY_CAP
                };
                assert!(left_out.reason.starts_with(cap), "{}", left_out.reason);
            }
        }
    }
}

/// Attack 1 of the boundary issue: a process left in the sandbox swaps a directory for a
/// symlink to a host directory while berth copies the tree. With path-based reads the copy
/// followed the link about one time in a few; through directory handles it never can.
#[test]
fn a_directory_swapped_for_a_symlink_during_the_copy_is_never_read_through() {
    let s = Scratch::new();
    // Enough files that the copy takes a while, and a directory the racer swaps.
    for i in 0..200 {
        s.file(&format!("a/f{i:03}"), 0o644, b"sandbox data");
    }
    s.file("b/keep", 0o644, b"x");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let a = s.src("a");
        let parked = s.src("a.real");
        let link = s.src("a.link");
        symlink(&s.outside, &link).unwrap();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // a -> a.real, a.link -> a, then back: `a` is a directory or a symlink to
                // `outside` at every moment.
                if fs::rename(&a, &parked).is_ok() {
                    let _ = fs::rename(&link, &a);
                    std::thread::yield_now();
                    let _ = fs::rename(&a, &link);
                    let _ = fs::rename(&parked, &a);
                    swaps += 1;
                }
            }
            swaps
        })
    };
    for round in 0..200 {
        let dest = s.dest.join(format!("round{round}"));
        fs::create_dir(&dest).unwrap();
        let out = copy_tree_safely(&s.src, &dest, &Limits::default()).unwrap();
        for file in &out.files {
            let path = dest.join(file);
            if let Ok(data) = fs::read(&path) {
                assert_ne!(data, b"host secret", "read through the link: {file:?}");
            }
        }
        assert!(!dest.join("a/secret").exists() && !dest.join("a.link/secret").exists());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert!(swaps > 100, "the racer swapped only {swaps} times");
    assert!(s.outside_untouched());
}

/// A sparse file stays sparse: only its data counts against the limit and reaches the disk.
#[test]
fn sparse_files_keep_their_holes() {
    let s = Scratch::new();
    let path = s.src("sparse");
    let file = fs::File::create(&path).unwrap();
    file.set_len(1 << 30).unwrap(); // 1 GiB of hole
    {
        use std::io::{Seek, Write};
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(512 << 20)).unwrap();
        file.write_all(b"middle").unwrap();
    }
    let limits = Limits {
        max_total_bytes: 1 << 20,
        max_entries: 10,
    };
    let out = copy_tree_safely(&s.src, &s.dest, &limits).unwrap();
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    let copied = fs::metadata(s.dest("sparse")).unwrap();
    assert_eq!(copied.len(), 1 << 30);
    use std::os::unix::fs::MetadataExt;
    assert!(
        copied.blocks() * 512 < 1 << 20,
        "{} bytes on disk",
        copied.blocks() * 512
    );
    let data = fs::read(s.dest("sparse")).unwrap();
    assert_eq!(&data[512 << 20..(512 << 20) + 6], b"middle");
}
