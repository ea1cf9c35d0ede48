//! `berth trust`: trust a workspace's `berth.toml` as it is now, revoke that, or show what the
//! file changes. An untrusted workspace file may only narrow settings (see `berth_core::trust`).

use std::path::PathBuf;

use berth_core::trust::TrustState;
use berth_core::ExitStatus;
use berth_sandbox::settings;
use berth_sandbox::trust::Inspection;
use berth_sandbox::SandboxError;

use crate::args::TrustArgs;
use crate::printer::{data_line, print_json, Printer};

pub fn trust(args: TrustArgs, printer: Printer) -> ExitStatus {
    match run(args, printer) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&e.to_string(), e.hint().as_deref());
            ExitStatus::Error
        }
    }
}

fn run(args: TrustArgs, printer: Printer) -> Result<(), SandboxError> {
    let file = workspace_file(args.path.clone())?;
    let store = crate::env::trust_store_file().ok_or_else(|| SandboxError::WithHint {
        message: "no configuration directory to keep trusted files in".into(),
        hint: "set XDG_CONFIG_HOME or HOME".into(),
    })?;
    let user_config = crate::env::user_config_file();
    let missing = || SandboxError::WithHint {
        message: format!("{}: no such file", file.display()),
        hint: "pass the berth.toml to trust, or the directory holding it".into(),
    };
    if args.revoke {
        let (canonical, removed) = berth_sandbox::trust::revoke_file(&store, &file)?;
        if args.json {
            print_json(&serde_json::json!({ "file": canonical, "revoked": removed }));
        } else if removed {
            printer.info(&format!("{} is no longer trusted", canonical.display()));
        } else {
            printer.info(&format!("{} was not trusted", canonical.display()));
        }
        return Ok(());
    }
    if args.show {
        let inspection =
            settings::inspect_workspace_file(user_config.as_deref(), &file, Some(&store))?
                .ok_or_else(missing)?;
        if args.json {
            print_json(&inspection);
        } else {
            for s in &inspection.settings {
                let note = if s.widens { "  # widens" } else { "" };
                data_line(&format!("{} = {}{note}", s.key, s.value));
            }
            printer.info(&summary(&inspection));
        }
        return Ok(());
    }
    let inspection = settings::trust_workspace_file(user_config.as_deref(), &file, &store)?
        .ok_or_else(missing)?;
    if args.json {
        print_json(&inspection);
    } else {
        printer.info(&format!(
            "trusted {} (sha256 {}); a change to it needs `berth trust` again",
            inspection.canonical.display(),
            &inspection.sha256[..12.min(inspection.sha256.len())]
        ));
    }
    Ok(())
}

/// The `berth.toml` named by `path` (a file, or a directory holding one), absolute.
fn workspace_file(path: Option<PathBuf>) -> Result<PathBuf, SandboxError> {
    let cwd = std::env::current_dir().map_err(|e| SandboxError::io(".", e))?;
    let path = match path {
        Some(p) if p.is_absolute() => p,
        Some(p) => cwd.join(p),
        None => cwd,
    };
    Ok(if path.is_dir() {
        path.join("berth.toml")
    } else {
        path
    })
}

fn summary(inspection: &Inspection) -> String {
    let file = inspection.file.display();
    let widening = inspection.widening_keys();
    let state = match inspection.state {
        TrustState::Trusted => return format!("{file} is trusted"),
        TrustState::Changed => "has changed since it was trusted",
        TrustState::Untrusted => "is not trusted",
    };
    match widening.as_slice() {
        [] => format!("{file} {state}; it only narrows settings, so it applies anyway"),
        keys => format!(
            "{file} {state}; berth refuses it until you trust it (`berth trust`), because of {}",
            keys.join(", ")
        ),
    }
}
