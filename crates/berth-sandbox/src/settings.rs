//! Loading configuration files: `~/.config/berth/config.toml`, then `<workspace>/berth.toml`.

use std::path::{Path, PathBuf};

use berth_core::config::{self, ConfigFile};

use crate::SandboxError;

/// The merged configuration, with `allowed_paths` made absolute.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub file: ConfigFile,
    pub allowed_paths: Vec<PathBuf>,
    /// The files that were read, in order.
    pub sources: Vec<PathBuf>,
    /// `[profiles]` of each file, in order, with the file's path.
    pub profile_layers: Vec<(
        String,
        std::collections::BTreeMap<String, berth_core::profile::ProfileConfig>,
    )>,
}

/// Reads the user's config file (if any) and the workspace's `berth.toml` (if any). The
/// workspace file may only narrow settings unless it is trusted in the store at `trust_store`
/// (see [`crate::trust`]); without a store nothing is trusted.
pub fn load(
    user_config: Option<&Path>,
    workspace: &Path,
    home: Option<&Path>,
    trust_store: Option<&Path>,
) -> Result<Settings, SandboxError> {
    let mut settings = Settings::default();
    let workspace_file = workspace.join("berth.toml");
    for (path, from_workspace) in user_config
        .map(|p| (p, false))
        .into_iter()
        .chain([(workspace_file.as_path(), true)])
    {
        let Some((text, mut file)) = read(path)? else {
            continue;
        };
        if let Some(name) = settings.file.redefined_engines(&file).first() {
            return Err(SandboxError::Invalid(format!(
                "{}: `[engines.{name}]` is already defined in {}; a workspace may not replace a user's engine, rename one of them",
                path.display(),
                settings.sources.first().map_or_else(String::new, |p| p.display().to_string())
            )));
        }
        if from_workspace {
            crate::trust::check(path, &text, &file, &settings.file, trust_store)?;
        }
        if !file.profiles.is_empty() {
            settings
                .profile_layers
                .push((path.display().to_string(), file.profiles.clone()));
        }
        let base = path.parent().unwrap_or(Path::new("/"));
        for allowed in &file.allowed_paths {
            settings.allowed_paths.push(absolute(allowed, base, home));
        }
        // An engine's files are relative to the file that names them.
        for engine in file.engines.values_mut() {
            for value in [
                &mut engine.identity,
                &mut engine.ca,
                &mut engine.cert,
                &mut engine.key,
            ]
            .into_iter()
            .flatten()
            {
                *value = absolute(value, base, home).display().to_string();
            }
        }
        settings.file = std::mem::take(&mut settings.file).merged(file);
        settings.sources.push(path.to_path_buf());
    }
    Ok(settings)
}

/// The most bytes a configuration file may hold.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A configuration file's text and contents; `None` when there is no such file.
///
/// A workspace `berth.toml` is something a sandbox can write: it is opened without following a
/// link, must be a regular file (not a FIFO that would hang berth, nor a device), and is read up
/// to a bound.
fn read(path: &Path) -> Result<Option<(String, ConfigFile)>, SandboxError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SandboxError::Invalid(format!(
                "{}: is a symbolic link; berth reads only a regular file there (a sandbox could point a link at any host file)",
                path.display()
            )))
        }
        Err(e) => return Err(SandboxError::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| SandboxError::io(path, e))?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        return Err(SandboxError::Invalid(format!(
            "{}: must be a regular file of at most {} KiB",
            path.display(),
            MAX_CONFIG_BYTES >> 10
        )));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| SandboxError::io(path, e))?;
    let file = config::parse(&path.display().to_string(), &text)?;
    Ok(Some((text, file)))
}

/// What the workspace file `file` would change compared with not having it, and whether it is
/// trusted (`berth trust --show`); `None` when there is no such file.
pub fn inspect_workspace_file(
    user_config: Option<&Path>,
    file: &Path,
    trust_store: Option<&Path>,
) -> Result<Option<crate::trust::Inspection>, SandboxError> {
    let user = match user_config {
        Some(path) => read(path)?.map(|(_, f)| f).unwrap_or_default(),
        None => ConfigFile::default(),
    };
    let Some((text, parsed)) = read(file)? else {
        return Ok(None);
    };
    crate::trust::inspect(file, &text, &parsed, &user, trust_store).map(Some)
}

/// Trusts the workspace file `file` as it is now (`berth trust`): the file is read once, checked
/// like any configuration file, and the hash of exactly those bytes recorded. `None` when there
/// is no such file.
pub fn trust_workspace_file(
    user_config: Option<&Path>,
    file: &Path,
    trust_store: &Path,
) -> Result<Option<crate::trust::Inspection>, SandboxError> {
    let user = match user_config {
        Some(path) => read(path)?.map(|(_, f)| f).unwrap_or_default(),
        None => ConfigFile::default(),
    };
    let Some((text, parsed)) = read(file)? else {
        return Ok(None);
    };
    crate::trust::trust_file(trust_store, file, &text)?;
    crate::trust::inspect(file, &text, &parsed, &user, Some(trust_store)).map(Some)
}

/// `~/x` against the home directory, relative paths against the config file's directory.
fn absolute(path: &str, base: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => base.join(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("config/berth/trusted.toml")
    }

    #[test]
    fn workspace_file_overrides_user_file_and_paths_are_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        std::fs::write(&user, "image = \"a\"\nallowed_paths = [\"~/data\"]\n").unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let text = "image = \"b\"\nallowed_paths = [\"../shared\"]\n";
        std::fs::write(ws.join("berth.toml"), text).unwrap();
        crate::trust::trust_file(&store(&dir), &ws.join("berth.toml"), text).unwrap();
        let s = load(
            Some(&user),
            &ws,
            Some(Path::new("/home/ann")),
            Some(&store(&dir)),
        )
        .unwrap();
        assert_eq!(s.file.image.as_deref(), Some("b"));
        assert_eq!(
            s.allowed_paths,
            [PathBuf::from("/home/ann/data"), ws.join("../shared")]
        );
        assert_eq!(s.sources.len(), 2);
    }

    #[test]
    fn engine_paths_are_absolute_and_a_workspace_cannot_replace_a_users_engine() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        std::fs::write(
            &user,
            "[engines.box]\nhost = \"tcp://box:2376\"\nca = \"certs/ca.pem\"\ncert = \"~/c.pem\"\nkey = \"/k.pem\"\n",
        )
        .unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let s = load(
            Some(&user),
            &ws,
            Some(Path::new("/home/ann")),
            Some(&store(&dir)),
        )
        .unwrap();
        let engine = &s.file.engines["box"];
        assert_eq!(
            engine.ca.as_deref(),
            Some(dir.path().join("certs/ca.pem").to_str().unwrap())
        );
        assert_eq!(engine.cert.as_deref(), Some("/home/ann/c.pem"));
        assert_eq!(engine.key.as_deref(), Some("/k.pem"));

        std::fs::write(
            ws.join("berth.toml"),
            "[engines.box]\nhost = \"ssh://elsewhere\"\n",
        )
        .unwrap();
        let e = load(Some(&user), &ws, None, Some(&store(&dir)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`[engines.box]` is already defined in") && e.contains("user.toml"),
            "{e}"
        );
    }

    #[test]
    fn an_untrusted_workspace_file_may_only_narrow() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(ws.join("berth.toml"), "memory = \"64m\"\nimage = \"x\"\n").unwrap();
        let s = load(None, ws, None, Some(&store(&dir))).unwrap();
        assert_eq!(s.file.memory.as_deref(), Some("64m"));
        std::fs::write(
            ws.join("berth.toml"),
            "[profiles.p]\nmounts = [\"/etc:/k:ro\"]\n",
        )
        .unwrap();
        let e = load(None, ws, None, Some(&store(&dir))).unwrap_err();
        assert!(
            e.to_string().contains("berth.toml")
                && e.to_string().contains("`profiles.p.mounts`")
                && e.hint().unwrap().contains("berth trust"),
            "{e}"
        );
    }

    /// A sandbox can write the workspace's `berth.toml`: a link to a host file, a FIFO that
    /// would hang the next berth, or an endless device is refused, never read.
    #[test]
    fn a_planted_berth_toml_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::os::unix::fs::symlink("/dev/zero", ws.join("berth.toml")).unwrap();
        let e = load(None, ws, None, None).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(ws.join("berth.toml")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(ws.join("berth.toml"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let e = load(None, ws, None, None).unwrap_err().to_string();
        assert!(e.contains("regular file"), "{e}");
    }

    #[test]
    fn unknown_key_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.toml"), "imagee = \"x\"\n").unwrap();
        let e = load(None, dir.path(), None, None).unwrap_err().to_string();
        assert!(e.contains("berth.toml") && e.contains("imagee"), "{e}");
    }
}
