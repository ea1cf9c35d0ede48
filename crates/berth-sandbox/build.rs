//! Compiles berth-shim as a static executable and embeds it in berth.
//!
//! The shim runs inside arbitrary images, including `FROM scratch` ones without a C library, so
//! it must be static. Cargo cannot build one crate of a workspace with different rustflags, so
//! the shim (one std-only file) is compiled here with plain rustc.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("../berth-shim/src/main.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let output = out_dir.join("berth-shim");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "berth_shim",
            "--crate-type",
            "bin",
        ])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "target-feature=+crt-static", "--target", &target])
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .status()
        .expect("running rustc for berth-shim");
    assert!(
        status.success(),
        "compiling berth-shim as a static executable failed"
    );
}
