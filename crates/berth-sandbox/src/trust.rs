//! The trust store on disk and the check of a workspace's `berth.toml` against it.
//!
//! `berth trust` records a workspace file's canonical path with the SHA-256 of its contents in
//! `$XDG_CONFIG_HOME/berth/trusted.toml`; the rule of what an untrusted file may set is
//! [`berth_core::trust`]. The path recorded is the file's directory, canonicalised, joined with
//! the file's own name: a `berth.toml` that is a symbolic link to a file trusted elsewhere is not
//! trusted here, and the hash is always of the bytes that are parsed.

use std::path::{Path, PathBuf};

use berth_core::config::ConfigFile;
use berth_core::trust::{self, Setting, TrustState, TrustStore};
use sha2::{Digest, Sha256};

use crate::SandboxError;

/// The SHA-256 of a file's contents, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The path a workspace file is recorded under: its directory canonicalised, and its name.
pub fn store_key(file: &Path) -> Result<PathBuf, SandboxError> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| SandboxError::Invalid(format!("{}: not a file name", file.display())))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| SandboxError::io(dir, e))?;
    Ok(dir.join(name))
}

/// The store at `path`; a missing file is an empty store.
pub fn read_store(path: &Path) -> Result<TrustStore, SandboxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(TrustStore::parse(&path.display().to_string(), &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustStore::default()),
        Err(e) => Err(SandboxError::io(path, e)),
    }
}

/// Writes the store through a temporary file and a rename, so a reader never sees half of it.
/// Two `berth trust` at the same moment may lose one record: the file is then refused again and
/// can be trusted again, never the other way round.
pub fn write_store(path: &Path, store: &TrustStore) -> Result<(), SandboxError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or_else(|| "trusted".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(store.render().as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(SandboxError::io(path, e));
    }
    Ok(())
}

/// What a workspace file would do, and whether it is trusted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The file as named.
    pub file: PathBuf,
    /// The path it is (or would be) recorded under.
    pub canonical: PathBuf,
    pub sha256: String,
    pub state: TrustState,
    /// Every key it sets, against the user's config and the built-in profiles.
    pub settings: Vec<Setting>,
}

impl Inspection {
    pub fn widening_keys(&self) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|s| s.widens)
            .map(|s| s.key.as_str())
            .collect()
    }
}

/// Inspects the workspace file `file` (its `text`, already parsed as `parsed`) against the user's
/// merged config `user` and the trust store at `store` (none: nothing is trusted).
pub fn inspect(
    file: &Path,
    text: &str,
    parsed: &ConfigFile,
    user: &ConfigFile,
    store: Option<&Path>,
) -> Result<Inspection, SandboxError> {
    let base = trust::base(
        user,
        berth_core::profile::builtins(env!("CARGO_PKG_VERSION")),
    );
    let canonical = store_key(file)?;
    let sha256 = sha256(text.as_bytes());
    let state = match store {
        Some(store) => read_store(store)?.state(&canonical.display().to_string(), &sha256),
        None => TrustState::Untrusted,
    };
    Ok(Inspection {
        file: file.to_path_buf(),
        canonical,
        sha256,
        state,
        settings: trust::settings(parsed, &base),
    })
}

/// Refuses a workspace file that widens settings unless it is trusted with these contents. The
/// store is read only when the file widens something.
pub fn check(
    file: &Path,
    text: &str,
    parsed: &ConfigFile,
    user: &ConfigFile,
    store: Option<&Path>,
) -> Result<(), SandboxError> {
    let base = trust::base(
        user,
        berth_core::profile::builtins(env!("CARGO_PKG_VERSION")),
    );
    let widening = trust::widening_keys(parsed, &base);
    if widening.is_empty() {
        return Ok(());
    }
    let inspection = inspect(file, text, parsed, user, store)?;
    if inspection.state == TrustState::Trusted {
        return Ok(());
    }
    Err(refusal(file, inspection.state, &widening))
}

/// The error for an untrusted (or changed) file that widens `keys`.
fn refusal(file: &Path, state: TrustState, keys: &[String]) -> SandboxError {
    let named: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    let (list, verb) = match named.as_slice() {
        [one] => (one.clone(), "widens"),
        [rest @ .., last] => (format!("{} and {last}", rest.join(", ")), "widen"),
        [] => (String::new(), "widens"),
    };
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    SandboxError::WithHint {
        message: format!(
            "{}: {list} {verb} the sandbox, and {}; a sandboxed run can write this file, so an untrusted one may only narrow settings",
            file.display(),
            match state {
                TrustState::Changed => "the file changed since it was trusted",
                _ => "the file is not trusted",
            }
        ),
        hint: format!(
            "if you wrote it, review it with `berth trust --show {d}` and trust it with `berth trust {d}`; otherwise remove those keys",
            d = dir.display()
        ),
    }
}

/// Records `file`'s current contents as trusted; returns what was recorded.
pub fn trust_file(
    store: &Path,
    file: &Path,
    text: &str,
) -> Result<(PathBuf, String), SandboxError> {
    let canonical = store_key(file)?;
    let hash = sha256(text.as_bytes());
    let mut records = read_store(store)?;
    records.trust(&canonical.display().to_string(), &hash);
    write_store(store, &records)?;
    Ok((canonical, hash))
}

/// Removes `file`'s record; says whether there was one.
pub fn revoke_file(store: &Path, file: &Path) -> Result<(PathBuf, bool), SandboxError> {
    let canonical = store_key(file)?;
    let mut records = read_store(store)?;
    let removed = records.revoke(&canonical.display().to_string());
    if removed {
        write_store(store, &records)?;
    }
    Ok((canonical, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_trusted_until_it_changes_and_a_symlink_is_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("config/berth/trusted.toml");
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let file = ws.join("berth.toml");
        let text = "allowed_paths = [\"/\"]\n";
        let parsed = berth_core::config::parse("w", text).unwrap();
        let user = ConfigFile::default();
        let e = check(&file, text, &parsed, &user, Some(&store)).unwrap_err();
        assert!(
            e.to_string().contains("`allowed_paths` widens")
                && e.to_string().contains("not trusted")
                && e.hint().unwrap().contains("berth trust"),
            "{e}"
        );
        trust_file(&store, &file, text).unwrap();
        check(&file, text, &parsed, &user, Some(&store)).unwrap();
        let changed = "allowed_paths = [\"/\", \"/etc\"]\n";
        let e = check(&file, changed, &parsed, &user, Some(&store)).unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
        // Another directory with the same contents is not trusted.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&file, other.join("berth.toml")).unwrap();
        assert!(check(
            &other.join("berth.toml"),
            text,
            &parsed,
            &user,
            Some(&store)
        )
        .is_err());
        // Narrowing needs no trust, and no store.
        let narrow = berth_core::config::parse("w", "memory = \"64m\"").unwrap();
        check(&file, "memory = \"64m\"", &narrow, &user, None).unwrap();
        assert!(revoke_file(&store, &file).unwrap().1);
        assert!(!revoke_file(&store, &file).unwrap().1);
        assert!(check(&file, text, &parsed, &user, Some(&store)).is_err());
    }
}
