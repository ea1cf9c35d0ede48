//! berth-shim, embedded in berth and installed once per version in the user's cache directory.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest;

use crate::SandboxError;

/// The static shim executable, built by `build.rs`.
pub static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-shim"));

/// Writes the shim under `cache_dir` (once per content) and returns its path.
///
/// It lives outside the workspace on purpose: the workspace is writable from inside sandboxes,
/// and a shim there could be replaced by one run to spy on the secrets of the next.
pub fn install(cache_dir: &Path) -> Result<PathBuf, SandboxError> {
    let digest = hex::encode(&sha2::Sha256::digest(SHIM)[..8]);
    let path = cache_dir.join(format!("berth-shim-{digest}"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == SHIM.len() as u64) {
        return Ok(path);
    }
    fs_err::create_dir_all(cache_dir).map_err(|e| SandboxError::io(cache_dir, e))?;
    // Unique per call, not only per process: a runner's workers install concurrently, and a
    // shared temporary file would be truncated under one writer and renamed away from another.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = cache_dir.join(format!(
        ".berth-shim-{digest}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(SHIM)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SandboxError::io(&path, e)
    })?;
    Ok(path)
}

/// The setup frame the shim reads on stdin: secrets, delivered outside the container's
/// configuration so they never show in `docker inspect` or in process arguments.
pub fn setup_frame(secrets: &[(String, String)]) -> Vec<u8> {
    let mut frame = FRAME_START.to_vec();
    for (name, value) in secrets {
        part(&mut frame, &format!("secret {name}"), value.as_bytes());
    }
    frame.extend_from_slice(FRAME_END);
    frame
}

/// The run frame a held container's supervisor (`/berth/shim --serve`) reads: the setup frame's
/// secrets, then the run's environment, argv, working directory, output FIFOs and input.
pub fn run_frame(
    run: &berth_core::held::RunRequest,
    secrets: &[(String, String)],
    input: Option<&[u8]>,
) -> Vec<u8> {
    let mut frame = FRAME_START.to_vec();
    for (name, value) in secrets {
        part(&mut frame, &format!("secret {name}"), value.as_bytes());
    }
    for (name, value) in &run.env {
        part(&mut frame, &format!("env {name}"), value.as_bytes());
    }
    for arg in &run.argv {
        part(&mut frame, "arg", arg.as_bytes());
    }
    part(&mut frame, "cwd", run.cwd.as_bytes());
    part(&mut frame, "stdout", run.stdout.as_bytes());
    part(&mut frame, "stderr", run.stderr.as_bytes());
    if let Some(input) = input {
        part(&mut frame, "input", input);
    }
    frame.extend_from_slice(FRAME_END);
    frame
}

const FRAME_START: &[u8] = b"berth-shim-v1\n";
const FRAME_END: &[u8] = b"end\n";

/// One part of a frame: `KIND LEN`, the value's bytes, a newline.
fn part(frame: &mut Vec<u8>, kind: &str, value: &[u8]) {
    frame.extend_from_slice(format!("{kind} {}\n", value.len()).as_bytes());
    frame.extend_from_slice(value);
    frame.push(b'\n');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A runner's workers install the shim at the same time on a cold cache.
    #[test]
    fn concurrent_installs_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(8);
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            install(dir.path())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in results {
                let path = r.unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), SHIM);
            }
            // No temporary file is left behind.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }
}
