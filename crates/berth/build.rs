//! Embeds berth's `images/` directory (the Dockerfile and the files it copies) and the context
//! of berth's own image (`deploy/image/`) in the binary, so `berth image build` works from any
//! directory after `cargo install`. The generated file lists each file with `include_bytes!`, its
//! path relative to its directory and whether it is executable.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut out = String::new();
    embed(
        &manifest.join("../../images"),
        "FILES",
        "berth's `images/`",
        &mut out,
    );
    embed(
        &manifest.join("../../deploy/image"),
        "BERTH_IMAGE_FILES",
        "the context of berth's own image, `deploy/image/` (the executable is added when building)",
        &mut out,
    );
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("images.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}

/// Appends `pub const NAME: &[(path, content, executable)]` holding the files under `dir`.
fn embed(dir: &Path, name: &str, doc: &str, out: &mut String) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files = Vec::new();
    collect(dir, "", &mut files);
    files.sort();
    writeln!(out, "/// {doc}: (path, content, executable).").expect("writing to a String");
    writeln!(out, "pub const {name}: &[(&str, &[u8], bool)] = &[").expect("writing to a String");
    for rel in &files {
        let path = dir.join(rel);
        println!("cargo:rerun-if-changed={}", path.display());
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        let absolute =
            std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?}), {}),",
            absolute.display().to_string(),
            mode & 0o111 != 0
        )
        .expect("writing to a String");
    }
    out.push_str("];\n");
}

/// Regular files under `root/prefix`, relative to `root`; directories are walked.
fn collect(root: &Path, prefix: &str, out: &mut Vec<String>) {
    let dir = root.join(prefix);
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().unwrap_or_else(|e| panic!("{rel}: {e}"));
        if kind.is_dir() {
            collect(root, &rel, out);
        } else if kind.is_file() {
            out.push(rel);
        }
    }
}
