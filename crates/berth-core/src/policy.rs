//! The mount policy: which host paths a sandbox may see and where.
//!
//! The caller canonicalises every source (resolving symlinks) before asking; this module only
//! judges. Each refusal names the path and the rule, so the user knows what to change.

use std::path::{Component, Path, PathBuf};

/// A mount source after the file system was asked about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The path as the user wrote it, for messages.
    pub given: PathBuf,
    /// The path with every symlink resolved; `None` when nothing exists there.
    pub canonical: Option<PathBuf>,
    /// Whether the canonical path is a Unix socket.
    pub is_socket: bool,
}

/// What the policy judges against.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// The user's home directory, canonical.
    pub home: Option<PathBuf>,
    /// Canonical roots under which sources may live: the workspace and `allowed_paths`.
    pub allowed_roots: Vec<PathBuf>,
    /// Canonical paths of the engine sockets known on this host.
    pub engine_sockets: Vec<PathBuf>,
}

/// A refused mount, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("mount source `{given}` does not exist")]
    SourceMissing { given: PathBuf },
    #[error("mount source `{given}` resolves to `{canonical}`, the Docker engine socket: a sandbox with the engine socket controls the host")]
    EngineSocket { given: PathBuf, canonical: PathBuf },
    #[error("mount source `{given}` resolves to `{canonical}`, which contains the Docker engine socket `{socket}`")]
    ContainsEngineSocket {
        given: PathBuf,
        canonical: PathBuf,
        socket: PathBuf,
    },
    #[error("mount source `{given}` resolves to `{canonical}`, a system path (/, /proc, /sys, /dev, /etc, /boot, /run and /var/run are never mounted)")]
    SystemPath { given: PathBuf, canonical: PathBuf },
    #[error("mount source `{given}` resolves to `{canonical}`, your whole home directory; mount a project directory inside it instead")]
    HomeDirectory { given: PathBuf, canonical: PathBuf },
    #[error("mount source `{given}` resolves to `{canonical}`, outside the allowed roots ({roots}); add it to `allowed_paths` in berth.toml to allow it")]
    OutsideAllowedRoots {
        given: PathBuf,
        canonical: PathBuf,
        roots: String,
    },
    #[error("mount destination `{target}` is not an absolute path; expected a path such as /data")]
    TargetNotAbsolute { target: String },
    #[error("mount destination `{target}` contains `..`; expected a plain absolute path")]
    TargetHasParent { target: String },
    #[error("mount destination `{target}` would shadow `{shadowed}`, which the sandbox needs")]
    TargetShadowsSystem {
        target: String,
        shadowed: &'static str,
    },
    #[error("mount destination `{target}` is used twice ({first} and {second})")]
    DuplicateTarget {
        target: String,
        first: String,
        second: String,
    },
}

/// Paths that are never mounted, nor anything below them.
const SYSTEM_TREES: [&str; 7] = ["/proc", "/sys", "/dev", "/etc", "/boot", "/run", "/var/run"];
/// Destinations that must not be mounted over, nor anything below them.
const PROTECTED_TARGETS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Checks one mount source against the policy and returns its canonical path.
pub fn check_source(source: &ResolvedSource, ctx: &PolicyContext) -> Result<PathBuf, PolicyError> {
    let given = source.given.clone();
    let Some(canonical) = source.canonical.clone() else {
        return Err(PolicyError::SourceMissing { given });
    };
    let named_like_engine_socket = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("docker") && n.ends_with(".sock"));
    if ctx.engine_sockets.contains(&canonical) || (source.is_socket && named_like_engine_socket) {
        return Err(PolicyError::EngineSocket { given, canonical });
    }
    if canonical == Path::new("/") || SYSTEM_TREES.iter().any(|tree| canonical.starts_with(tree)) {
        return Err(PolicyError::SystemPath { given, canonical });
    }
    if let Some(socket) = ctx
        .engine_sockets
        .iter()
        .find(|s| s.starts_with(&canonical))
    {
        return Err(PolicyError::ContainsEngineSocket {
            given,
            canonical,
            socket: socket.clone(),
        });
    }
    if ctx.home.as_ref() == Some(&canonical) {
        return Err(PolicyError::HomeDirectory { given, canonical });
    }
    if !ctx
        .allowed_roots
        .iter()
        .any(|root| canonical.starts_with(root))
    {
        let roots = ctx
            .allowed_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PolicyError::OutsideAllowedRoots {
            given,
            canonical,
            roots,
        });
    }
    Ok(canonical)
}

/// Checks the workspace itself: the same rules as any source, except that it is its own root.
pub fn check_workspace(
    source: &ResolvedSource,
    ctx: &PolicyContext,
) -> Result<PathBuf, PolicyError> {
    let mut ctx = ctx.clone();
    if let Some(canonical) = &source.canonical {
        ctx.allowed_roots = vec![canonical.clone()];
    }
    check_source(source, &ctx)
}

/// Checks a destination inside the sandbox and returns it normalised (no `.`, no trailing `/`).
pub fn check_target(target: &str) -> Result<String, PolicyError> {
    let path = Path::new(target);
    if !path.is_absolute() {
        return Err(PolicyError::TargetNotAbsolute {
            target: target.to_string(),
        });
    }
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(PolicyError::TargetHasParent {
                    target: target.to_string(),
                })
            }
            Component::Normal(part) => normal.push(part),
            Component::Prefix(_) => {
                return Err(PolicyError::TargetNotAbsolute {
                    target: target.to_string(),
                })
            }
        }
    }
    if normal == Path::new("/") {
        return Err(PolicyError::TargetShadowsSystem {
            target: target.to_string(),
            shadowed: "/",
        });
    }
    if let Some(shadowed) = PROTECTED_TARGETS.iter().find(|p| normal.starts_with(p)) {
        return Err(PolicyError::TargetShadowsSystem {
            target: target.to_string(),
            shadowed,
        });
    }
    Ok(normal.to_string_lossy().into_owned())
}

/// Refuses two mounts on one destination. `targets` pairs each destination with a description
/// of who asked for it (`--mount ./a:/data`, `the workspace`, ...).
pub fn check_unique_targets<'a>(
    targets: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), PolicyError> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (target, who) in targets {
        if let Some((_, first)) = seen.iter().find(|(t, _)| *t == target) {
            return Err(PolicyError::DuplicateTarget {
                target: target.to_string(),
                first: first.to_string(),
                second: who.to_string(),
            });
        }
        seen.push((target, who));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PolicyContext {
        PolicyContext {
            home: Some("/home/ann".into()),
            allowed_roots: vec!["/home/ann/project".into(), "/srv/data".into()],
            engine_sockets: vec!["/run/docker.sock".into()],
        }
    }

    fn existing(path: &str) -> ResolvedSource {
        ResolvedSource {
            given: path.into(),
            canonical: Some(path.into()),
            is_socket: false,
        }
    }

    /// Returns the name of the rule that refused `source`, or "ok".
    fn check(source: ResolvedSource) -> &'static str {
        match check_source(&source, &ctx()) {
            Ok(_) => "ok",
            Err(PolicyError::SourceMissing { .. }) => "missing",
            Err(PolicyError::EngineSocket { .. }) => "socket",
            Err(PolicyError::ContainsEngineSocket { .. }) => "contains-socket",
            Err(PolicyError::SystemPath { .. }) => "system",
            Err(PolicyError::HomeDirectory { .. }) => "home",
            Err(PolicyError::OutsideAllowedRoots { .. }) => "outside",
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn sources() {
        assert_eq!(check(existing("/home/ann/project/src")), "ok");
        assert_eq!(check(existing("/home/ann/project")), "ok");
        assert_eq!(check(existing("/srv/data/x")), "ok");
        assert_eq!(
            check(ResolvedSource {
                canonical: None,
                ..existing("/nope")
            }),
            "missing"
        );
        for system in [
            "/",
            "/proc",
            "/proc/1/root",
            "/sys",
            "/dev",
            "/etc",
            "/etc/ssl",
            "/boot",
            "/run",
            "/var/run",
        ] {
            assert_eq!(check(existing(system)), "system", "{system}");
        }
        assert_eq!(check(existing("/home/ann")), "home");
        assert_eq!(check(existing("/home/ann/other")), "outside");
        assert_eq!(
            check(existing("/srv/database")),
            "outside",
            "prefix of a root is not inside it"
        );
        assert_eq!(check(existing("/tmp")), "outside");
    }

    #[test]
    fn engine_sockets_are_refused_however_reached() {
        // A symlink inside the project pointing at the socket: the caller resolved it.
        let link = ResolvedSource {
            given: "/home/ann/project/sock".into(),
            canonical: Some("/run/docker.sock".into()),
            is_socket: true,
        };
        assert_eq!(
            check(link),
            "socket",
            "named as the socket, though it also lives under /run"
        );
        let other = PolicyContext {
            engine_sockets: vec!["/srv/data/docker.sock".into()],
            ..ctx()
        };
        let direct = ResolvedSource {
            is_socket: true,
            ..existing("/srv/data/docker.sock")
        };
        assert!(matches!(
            check_source(&direct, &other),
            Err(PolicyError::EngineSocket { .. })
        ));
        assert!(matches!(
            check_source(&existing("/srv/data"), &other),
            Err(PolicyError::ContainsEngineSocket { .. })
        ));
        let renamed = ResolvedSource {
            is_socket: true,
            ..existing("/srv/data/rootless-docker.sock")
        };
        assert_eq!(check(renamed), "socket");
    }

    #[test]
    fn errors_name_path_and_rule() {
        let e = check_source(&existing("/home/ann/other"), &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/home/ann/other") && e.contains("allowed_paths"),
            "{e}"
        );
        let e = check_source(&existing("/etc"), &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`/etc`") && e.contains("system path"), "{e}");
    }

    #[test]
    fn workspace_is_its_own_root() {
        assert!(check_workspace(&existing("/tmp/ws"), &ctx()).is_ok());
        assert!(matches!(
            check_workspace(&existing("/home/ann"), &ctx()),
            Err(PolicyError::HomeDirectory { .. })
        ));
        assert!(matches!(
            check_workspace(&existing("/"), &ctx()),
            Err(PolicyError::SystemPath { .. })
        ));
    }

    fn target(t: &str) -> Result<String, &'static str> {
        check_target(t).map_err(|e| match e {
            PolicyError::TargetNotAbsolute { .. } => "relative",
            PolicyError::TargetHasParent { .. } => "parent",
            PolicyError::TargetShadowsSystem { .. } => "shadows",
            _ => "other",
        })
    }

    #[test]
    fn targets() {
        assert_eq!(target("/data"), Ok("/data".into()));
        assert_eq!(target("/data/./x/"), Ok("/data/x".into()));
        assert_eq!(target("//data"), Ok("/data".into()));
        assert_eq!(target("data"), Err("relative"));
        assert_eq!(target("/data/../etc"), Err("parent"));
        assert_eq!(target("/"), Err("shadows"));
        assert_eq!(target("/./"), Err("shadows"));
        assert_eq!(target("/proc"), Err("shadows"));
        assert_eq!(target("/proc/sys"), Err("shadows"));
        assert_eq!(target("/sys"), Err("shadows"));
        assert_eq!(target("/dev/shm"), Err("shadows"));
        assert_eq!(target("/devices"), Ok("/devices".into()));
    }

    #[test]
    fn duplicate_targets() {
        assert!(check_unique_targets([("/a", "x"), ("/b", "y")]).is_ok());
        let e = check_unique_targets([
            ("/workspace", "the workspace"),
            ("/workspace", "--mount a:/workspace"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/workspace") && e.contains("the workspace") && e.contains("--mount"),
            "{e}"
        );
    }
}
