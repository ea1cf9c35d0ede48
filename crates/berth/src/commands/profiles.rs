//! `berth profiles` and `berth sessions`.

use berth_core::profile::{self, Profile};
use berth_core::ExitStatus;

use crate::args::{ProfilesArgs, SessionsArgs};
use crate::printer::{data_line, print_json, Printer};

/// Every profile: built-ins, then the user's config file, then the workspace's berth.toml.
pub fn all_profiles(
    settings: &berth_sandbox::settings::Settings,
) -> Result<Vec<Profile>, profile::ProfileError> {
    profile::resolve_all(
        profile::builtins(env!("CARGO_PKG_VERSION")),
        &settings.profile_layers,
    )
}

/// A profile as listed: whether its image is on the engine (`None`: no image, or the engine
/// could not be asked).
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    profile: &'a Profile,
    image_present: Option<bool>,
}

pub async fn profiles(args: ProfilesArgs, printer: Printer) -> ExitStatus {
    let workspace = args
        .workspace
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| ".".into());
    let settings = match super::load_settings(&workspace) {
        Ok(settings) => settings,
        Err(e) => {
            printer.error(&e.to_string(), e.hint().as_deref());
            return ExitStatus::Error;
        }
    };
    let profiles = match all_profiles(&settings) {
        Ok(p) => p,
        Err(e) => {
            printer.error(
                &e.to_string(),
                Some("fix the [profiles] table named in the message"),
            );
            return ExitStatus::Error;
        }
    };
    let engine = berth_engine::diagnose::check_engine(&super::probe_env()).await;
    let mut listed = Vec::new();
    for profile in &profiles {
        let image_present = match (&engine, &profile.image) {
            (Ok((engine, _, _)), Some(image)) => berth_engine::Engine::inspect_image(engine, image)
                .await
                .ok()
                .map(|info| info.is_some()),
            _ => None,
        };
        listed.push(Listed {
            profile,
            image_present,
        });
    }
    if args.json {
        print_json(&listed);
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<20}  {:<20}  {:<30}  {:<7}  SOURCE",
        "PROFILE", "OUTPUT", "IMAGE", "PRESENT"
    ));
    for l in &listed {
        let p = l.profile;
        data_line(&format!(
            "{:<20}  {:<20}  {:<30}  {:<7}  {}",
            p.name,
            p.output,
            p.image.clone().unwrap_or_else(|| "-".into()),
            match l.image_present {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            p.source
        ));
    }
    match &engine {
        Err((diagnosis, _)) => printer.warning(&format!(
            "whether the images are present is unknown: {}",
            diagnosis.message()
        )),
        Ok(_) => {
            let mut builds: Vec<String> = Vec::new();
            for l in listed.iter().filter(|l| l.image_present == Some(false)) {
                let Some(image) = &l.profile.image else {
                    continue;
                };
                let command = profile::image_build_command(image, env!("CARGO_PKG_VERSION"));
                if let Some(command) = command.filter(|c| !builds.contains(c)) {
                    builds.push(command);
                }
            }
            if !builds.is_empty() {
                printer.info(&format!(
                    "missing images are built with: {}",
                    builds
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    ExitStatus::Success
}

#[derive(serde::Serialize)]
struct SessionView {
    session: String,
    profile: Option<String>,
    run: String,
    created_at: String,
    state: String,
}

pub fn sessions(args: SessionsArgs, _printer: Printer) -> ExitStatus {
    let records = super::state_dir(args.state.state_dir, args.workspace).list();
    let sessions: Vec<SessionView> = records
        .into_iter()
        .filter_map(|r| {
            Some(SessionView {
                session: r.agent_session.clone()?,
                profile: r.spec.profile.clone(),
                run: r.id,
                created_at: r.created_at,
                state: r.state.to_string(),
            })
        })
        .collect();
    if args.json {
        print_json(&sessions);
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<40}  {:<20}  {:<16}  {:<10}  CREATED",
        "SESSION", "PROFILE", "RUN", "STATE"
    ));
    for s in sessions {
        data_line(&format!(
            "{:<40}  {:<20}  {:<16}  {:<10}  {}",
            s.session,
            s.profile.unwrap_or_default(),
            s.run,
            s.state,
            s.created_at
        ));
    }
    ExitStatus::Success
}
