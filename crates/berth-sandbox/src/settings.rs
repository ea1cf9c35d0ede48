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

/// Reads the user's config file (if any) and the workspace's `berth.toml` (if any).
pub fn load(
    user_config: Option<&Path>,
    workspace: &Path,
    home: Option<&Path>,
) -> Result<Settings, SandboxError> {
    let mut settings = Settings::default();
    let workspace_file = workspace.join("berth.toml");
    for path in user_config.into_iter().chain([workspace_file.as_path()]) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SandboxError::io(path, e)),
        };
        let mut file = config::parse(&path.display().to_string(), &text)?;
        if let Some(name) = settings.file.redefined_engines(&file).first() {
            return Err(SandboxError::Invalid(format!(
                "{}: `[engines.{name}]` is already defined in {}; a workspace may not replace a user's engine, rename one of them",
                path.display(),
                settings.sources.first().map_or_else(String::new, |p| p.display().to_string())
            )));
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

    #[test]
    fn workspace_file_overrides_user_file_and_paths_are_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        std::fs::write(&user, "image = \"a\"\nallowed_paths = [\"~/data\"]\n").unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(
            ws.join("berth.toml"),
            "image = \"b\"\nallowed_paths = [\"../shared\"]\n",
        )
        .unwrap();
        let s = load(Some(&user), &ws, Some(Path::new("/home/ann"))).unwrap();
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
        let s = load(Some(&user), &ws, Some(Path::new("/home/ann"))).unwrap();
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
        let e = load(Some(&user), &ws, None).unwrap_err().to_string();
        assert!(
            e.contains("`[engines.box]` is already defined in") && e.contains("user.toml"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.toml"), "imagee = \"x\"\n").unwrap();
        let e = load(None, dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("berth.toml") && e.contains("imagee"), "{e}");
    }
}
