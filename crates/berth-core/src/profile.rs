//! Profiles: named executor configurations (an agent or plain commands), built in or from config.
//!
//! A profile says which image to use, how to turn a prompt into argv (never a shell string), which
//! credentials it takes, where its sessions live, and how its output is to be read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A profile as written in a config file (`[profiles.NAME]`): every field optional, so a file can
/// override single fields of a built-in profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub description: Option<String>,
    pub image: Option<String>,
    /// argv template: `{prompt}` is replaced by the prompt as one argument; an element `{resume}`
    /// expands to `resume_args` / `continue_args`, or to nothing.
    pub command: Option<Vec<String>>,
    /// How the prompt reaches the agent: `argument` (the `{prompt}` element), `stdin`, or `none`
    /// (no prompt: the positional arguments are the command, as with `berth run`).
    pub prompt: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    /// Secrets the profile needs: taken from the host environment, an error when unset.
    pub secrets: Option<Vec<String>>,
    /// Credentials passed when set on the host (as secrets), skipped when unset.
    pub credentials: Option<Vec<String>>,
    /// Groups of credentials that must not be passed together.
    pub conflicts: Option<Vec<Vec<String>>>,
    /// Extra mounts, `SRC:DST[:ro|rw]`.
    pub mounts: Option<Vec<String>>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    /// The disk limit (`--disk`), e.g. `"10g"`.
    pub disk: Option<String>,
    pub network: Option<String>,
    /// `runc` or `gvisor`: the run's isolation unless a flag says otherwise.
    pub isolation: Option<String>,
    pub timeout: Option<String>,
    /// `claude-stream-json`, `codex-jsonl` or `text`.
    pub output: Option<String>,
    /// `ephemeral` (a fresh container per run) or `persistent`.
    pub lifecycle: Option<String>,
    /// Persistent profiles: at most this many containers (one per `--name`); the least recently
    /// used idle one makes room.
    pub max_containers: Option<u32>,
    /// Persistent profiles: a container idle this long is removed (`2h`).
    pub idle_ttl: Option<String>,
    /// The agent whose sessions directory is mounted (`claude`, `codex`); also the directory's
    /// name on the host.
    pub agent: Option<String>,
    /// Where the sessions directory is mounted in the sandbox.
    pub sessions: Option<String>,
    /// What `{resume}` becomes with `--resume SESSION` (`{session}` is replaced).
    pub resume_args: Option<Vec<String>>,
    /// What `{resume}` becomes with `--continue`.
    pub continue_args: Option<Vec<String>>,
    /// `none`, `policy` or `open`: the run's egress unless a flag says otherwise.
    pub egress: Option<String>,
    /// Allow rules the profile adds (see `egress`).
    pub allow_hosts: Option<Vec<String>>,
    /// Credentials the proxy adds instead of the sandbox holding them:
    /// `{ ANTHROPIC_API_KEY = "anthropic" }`. Used with egress policy.
    pub broker: Option<BTreeMap<String, String>>,
}

/// How the prompt reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptVia {
    Argument,
    Stdin,
    None,
}

/// A profile with every layer applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    /// Where it comes from: `built-in`, a config file, or `built-in, overridden by FILE`.
    pub source: String,
    pub description: String,
    pub image: Option<String>,
    pub command: Vec<String>,
    pub prompt: PromptVia,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub credentials: Vec<String>,
    pub conflicts: Vec<Vec<String>>,
    pub mounts: Vec<String>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    /// The disk limit in bytes, checked.
    pub disk: Option<u64>,
    pub network: Option<String>,
    pub isolation: Option<crate::spec::Isolation>,
    pub timeout: Option<String>,
    pub output: String,
    pub lifecycle: String,
    pub max_containers: u32,
    #[serde(with = "crate::spec::duration_secs")]
    pub idle_ttl: std::time::Duration,
    pub agent: Option<String>,
    pub sessions: Option<String>,
    pub resume_args: Vec<String>,
    pub continue_args: Vec<String>,
    pub egress: Option<crate::egress::EgressMode>,
    pub allow_hosts: Vec<String>,
    pub broker: Vec<crate::egress::Broker>,
}

/// A profile cannot be used as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile `{name}`; known profiles: {known}")]
    Unknown { name: String, known: String },
    #[error("profile `{profile}`: {message}")]
    Invalid { profile: String, message: String },
    #[error("{first} and {second} are both set and conflict: {profile} would use one and silently ignore the other; unset one of them, or choose with --secret NAME")]
    CredentialConflict {
        profile: String,
        first: String,
        second: String,
    },
    #[error("profile `{profile}` needs a credential and none is set: {}", names.join(" or "))]
    CredentialsMissing { profile: String, names: Vec<String> },
    #[error("profile `{profile}` takes a prompt: berth run --profile {profile} \"what to do\"")]
    PromptMissing { profile: String },
    #[error("profile `{profile}` cannot resume sessions")]
    NoSessions { profile: String },
}

/// What the user asked to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    None,
    Session(String),
    Continue,
}

/// The berth version's image tag for a built-in target.
pub fn builtin_image(target: &str, version: &str) -> String {
    format!("berth/{target}:{version}")
}

/// The stages of berth's `images/Dockerfile` that `berth image build` builds.
pub const IMAGE_TARGETS: [&str; 4] = ["base", "procedural", "claude-code", "codex"];

/// The `berth image build` command that makes `image`, when it is one of berth's images of this
/// `version` (`REPOSITORY/TARGET:VERSION`): such an image is built locally, never pulled.
pub fn image_build_command(image: &str, version: &str) -> Option<String> {
    let (name, tag) = image.rsplit_once(':')?;
    if tag != version || name.contains('@') {
        return None;
    }
    let (repository, target) = name.rsplit_once('/')?;
    if !IMAGE_TARGETS.contains(&target) {
        return None;
    }
    Some(if repository == "berth" {
        format!("berth image build {target}")
    } else {
        format!("berth image build {target} --repository {repository}")
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Where the built-in Claude Code profiles mount their sessions directory.
const CLAUDE_SESSIONS: &str = "/home/agent/.claude";

/// The built-in profiles for berth `version`.
pub fn builtins(version: &str) -> Vec<(String, ProfileConfig)> {
    let claude = |description: &str, extra: &[&str]| {
        let mut command = strings(&[
            "claude",
            "-p",
            "{prompt}",
            "--output-format",
            "stream-json",
            "--verbose",
        ]);
        // berth is the sandbox: Claude Code's own permission prompts and sandbox would only stall
        // a non-interactive run inside it.
        command.push("--dangerously-skip-permissions".into());
        command.extend(strings(extra));
        command.push("{resume}".into());
        ProfileConfig {
            description: Some(description.into()),
            image: Some(builtin_image("claude-code", version)),
            command: Some(command),
            prompt: Some("argument".into()),
            credentials: Some(strings(&["CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY"])),
            conflicts: Some(vec![strings(&[
                "CLAUDE_CODE_OAUTH_TOKEN",
                "ANTHROPIC_API_KEY",
            ])]),
            egress: Some("policy".into()),
            allow_hosts: Some(strings(&["api.anthropic.com:443"])),
            broker: Some(BTreeMap::from([
                ("ANTHROPIC_API_KEY".to_string(), "anthropic".to_string()),
                (
                    "CLAUDE_CODE_OAUTH_TOKEN".to_string(),
                    "anthropic".to_string(),
                ),
            ])),
            env: Some(BTreeMap::from([
                // Telemetry and update checks would only be refused by the egress policy.
                (
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_string(),
                    "1".to_string(),
                ),
                // Claude Code keeps its config file (`.claude.json`) beside `~/.claude`, not in
                // it: only the sessions directory outlives a run, so without this a resumed run
                // finds its config gone and says so on stderr. It also ties the CLI to the
                // mounted directory whatever the image's HOME is.
                ("CLAUDE_CONFIG_DIR".to_string(), CLAUDE_SESSIONS.to_string()),
            ])),
            output: Some("claude-stream-json".into()),
            agent: Some("claude".into()),
            sessions: Some(CLAUDE_SESSIONS.into()),
            resume_args: Some(strings(&["--resume", "{session}"])),
            continue_args: Some(strings(&["--continue"])),
            ..ProfileConfig::default()
        }
    };
    let codex = |description: &str, effort: Option<&str>| {
        let mut command = strings(&[
            "codex",
            "exec",
            "{resume}",
            "--json",
            "--skip-git-repo-check",
        ]);
        // berth is the sandbox: Codex's own sandbox cannot work inside an unprivileged container.
        command.push("--dangerously-bypass-approvals-and-sandbox".into());
        if let Some(effort) = effort {
            command.extend(strings(&[
                "--config",
                &format!("model_reasoning_effort={effort}"),
            ]));
        }
        command.push("{prompt}".into());
        ProfileConfig {
            description: Some(description.into()),
            image: Some(builtin_image("codex", version)),
            command: Some(command),
            prompt: Some("argument".into()),
            credentials: Some(strings(&["OPENAI_API_KEY"])),
            egress: Some("policy".into()),
            allow_hosts: Some(strings(&["api.openai.com:443"])),
            broker: Some(BTreeMap::from([(
                "OPENAI_API_KEY".to_string(),
                "openai".to_string(),
            )])),
            output: Some("codex-jsonl".into()),
            agent: Some("codex".into()),
            sessions: Some("/home/agent/.codex".into()),
            resume_args: Some(strings(&["resume", "{session}"])),
            continue_args: Some(strings(&["resume", "--last"])),
            ..ProfileConfig::default()
        }
    };
    vec![
        (
            "claude-code".into(),
            claude("Claude Code, the default model", &[]),
        ),
        (
            "claude-code-strong".into(),
            claude(
                "Claude Code with the strongest model (opus)",
                &["--model", "opus"],
            ),
        ),
        (
            "claude-code-fast".into(),
            claude(
                "Claude Code with a fast model (haiku)",
                &["--model", "haiku"],
            ),
        ),
        ("codex".into(), codex("Codex CLI", None)),
        (
            "codex-strong".into(),
            codex("Codex CLI with high reasoning effort", Some("high")),
        ),
        (
            "codex-fast".into(),
            codex("Codex CLI with low reasoning effort", Some("low")),
        ),
        (
            "procedural".into(),
            ProfileConfig {
                description: Some(
                    "plain commands: the arguments are the command, as with berth run".into(),
                ),
                image: Some(builtin_image("procedural", version)),
                prompt: Some("none".into()),
                output: Some("text".into()),
                ..ProfileConfig::default()
            },
        ),
    ]
}

/// Applies `over` on top of `base`, field by field.
fn layer(base: &mut ProfileConfig, over: &ProfileConfig) {
    macro_rules! take {
        ($($field:ident),*) => { $( if over.$field.is_some() { base.$field = over.$field.clone(); } )* };
    }
    take!(
        description,
        image,
        command,
        prompt,
        env,
        secrets,
        credentials,
        conflicts,
        mounts,
        memory,
        cpus,
        pids,
        disk,
        network,
        isolation,
        timeout,
        output,
        lifecycle,
        max_containers,
        idle_ttl,
        agent,
        sessions,
        resume_args,
        continue_args,
        egress,
        allow_hosts,
        broker
    );
}

/// Every profile: the built-ins, then each config layer `(source, profiles)` in order.
pub fn resolve_all(
    builtins: Vec<(String, ProfileConfig)>,
    layers: &[(String, BTreeMap<String, ProfileConfig>)],
) -> Result<Vec<Profile>, ProfileError> {
    let mut merged: BTreeMap<String, (String, ProfileConfig)> = builtins
        .into_iter()
        .map(|(name, config)| (name, ("built-in".to_string(), config)))
        .collect();
    for (source, profiles) in layers {
        for (name, config) in profiles {
            match merged.get_mut(name) {
                Some((origin, base)) => {
                    layer(base, config);
                    *origin = format!("{origin}, overridden by {source}");
                }
                None => {
                    merged.insert(name.clone(), (source.clone(), config.clone()));
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(name, (source, config))| finish(name, source, config))
        .collect()
}

fn finish(name: String, source: String, c: ProfileConfig) -> Result<Profile, ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        profile: name.clone(),
        message,
    };
    let prompt = match c.prompt.as_deref().unwrap_or("argument") {
        "argument" => PromptVia::Argument,
        "stdin" => PromptVia::Stdin,
        "none" => PromptVia::None,
        other => {
            return Err(invalid(format!(
                "prompt `{other}` is not argument, stdin or none"
            )))
        }
    };
    let command = c.command.unwrap_or_default();
    if prompt == PromptVia::Argument && !command.iter().any(|a| a.contains("{prompt}")) {
        return Err(invalid(
            "prompt = \"argument\" needs a `{prompt}` element in command".into(),
        ));
    }
    if prompt != PromptVia::None && command.is_empty() {
        return Err(invalid("command is empty".into()));
    }
    let output = c.output.unwrap_or_else(|| "text".into());
    if !["claude-stream-json", "codex-jsonl", "text"].contains(&output.as_str()) {
        return Err(invalid(format!(
            "output `{output}` is not claude-stream-json, codex-jsonl or text"
        )));
    }
    let lifecycle = c.lifecycle.unwrap_or_else(|| "ephemeral".into());
    if !["ephemeral", "persistent"].contains(&lifecycle.as_str()) {
        return Err(invalid(format!(
            "lifecycle `{lifecycle}` is not ephemeral or persistent"
        )));
    }
    let max_containers = c
        .max_containers
        .unwrap_or(crate::held::DEFAULT_MAX_CONTAINERS);
    if max_containers == 0 {
        return Err(invalid("max_containers must be at least 1".into()));
    }
    let idle_ttl = match &c.idle_ttl {
        Some(t) => {
            crate::units::parse_duration(t).map_err(|e| invalid(format!("idle_ttl: {e}")))?
        }
        None => crate::held::DEFAULT_PERSISTENT_TTL,
    };
    if c.sessions.is_some() && c.agent.is_none() {
        return Err(invalid(
            "sessions needs agent (the name of its directory on the host)".into(),
        ));
    }
    let egress = c
        .egress
        .as_deref()
        .map(crate::egress::EgressMode::parse)
        .transpose()
        .map_err(|e| invalid(format!("egress: {e}")))?;
    let disk = c
        .disk
        .as_deref()
        .map(crate::units::parse_disk)
        .transpose()
        .map_err(|e| invalid(format!("disk: {e}")))?;
    let isolation = c
        .isolation
        .as_deref()
        .map(str::parse::<crate::spec::Isolation>)
        .transpose()
        .map_err(|e| invalid(format!("isolation: {e}")))?;
    let allow_hosts = c.allow_hosts.unwrap_or_default();
    for rule in &allow_hosts {
        crate::egress::Rule::parse(rule).map_err(|e| invalid(format!("allow_hosts: {e}")))?;
    }
    let broker = c
        .broker
        .unwrap_or_default()
        .into_iter()
        .map(|(credential, api)| {
            crate::spec::check_env_name(&credential)
                .map_err(|e| invalid(format!("broker: {e}")))?;
            let api = crate::egress::BrokeredApi::parse(&api)
                .map_err(|e| invalid(format!("broker.{credential}: {e}")))?;
            Ok(crate::egress::Broker { credential, api })
        })
        .collect::<Result<Vec<_>, ProfileError>>()?;
    Ok(Profile {
        name,
        source,
        description: c.description.unwrap_or_default(),
        image: c.image,
        command,
        prompt,
        env: c.env.unwrap_or_default(),
        secrets: c.secrets.unwrap_or_default(),
        credentials: c.credentials.unwrap_or_default(),
        conflicts: c.conflicts.unwrap_or_default(),
        mounts: c.mounts.unwrap_or_default(),
        memory: c.memory,
        cpus: c.cpus,
        pids: c.pids,
        disk,
        network: c.network,
        isolation,
        timeout: c.timeout,
        output,
        lifecycle,
        max_containers,
        idle_ttl,
        agent: c.agent,
        sessions: c.sessions,
        resume_args: c.resume_args.unwrap_or_default(),
        continue_args: c.continue_args.unwrap_or_default(),
        egress,
        allow_hosts,
        broker,
    })
}

/// Every secret a run takes: the profile's required secrets, its credentials that are set on
/// the host (`is_set`; see [`Profile::credentials_to_pass`]), then the `explicit` ones, each
/// once. The same for `berth run` and for a runner; a profile whose credentials are all missing
/// is refused here ([`Profile::check_credentials`]), so no caller can start an agent that is not
/// logged in.
pub fn secrets_for(
    profile: Option<&Profile>,
    explicit: &[String],
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ProfileError> {
    let mut secrets: Vec<String> = profile.map(|p| p.secrets.clone()).unwrap_or_default();
    if let Some(p) = profile {
        p.check_credentials(explicit, &is_set)?;
        secrets.extend(p.credentials_to_pass(explicit, is_set)?);
    }
    for name in explicit {
        if !secrets.contains(name) {
            secrets.push(name.clone());
        }
    }
    Ok(secrets)
}

/// Finds `name` among `profiles`, or says which exist.
pub fn find<'a>(profiles: &'a [Profile], name: &str) -> Result<&'a Profile, ProfileError> {
    profiles
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ProfileError::Unknown {
            name: name.to_string(),
            known: profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl Profile {
    /// The argv for `words` (the prompt's words, or the command with `prompt = "none"`), and the
    /// bytes to feed on stdin, if any. The prompt is one argument or stdin, never a shell string.
    pub fn argv(
        &self,
        words: &[String],
        resume: &Resume,
    ) -> Result<(Vec<String>, Option<Vec<u8>>), ProfileError> {
        if self.prompt == PromptVia::None {
            let mut argv = self.command.clone();
            argv.extend(words.iter().cloned());
            return Ok((argv, None));
        }
        if words.is_empty() {
            return Err(ProfileError::PromptMissing {
                profile: self.name.clone(),
            });
        }
        let prompt = words.join(" ");
        let resume_args: Vec<String> = match resume {
            Resume::None => Vec::new(),
            Resume::Session(id) => {
                if self.resume_args.is_empty() {
                    return Err(ProfileError::NoSessions {
                        profile: self.name.clone(),
                    });
                }
                self.resume_args
                    .iter()
                    .map(|a| a.replace("{session}", id))
                    .collect()
            }
            Resume::Continue => {
                if self.continue_args.is_empty() {
                    return Err(ProfileError::NoSessions {
                        profile: self.name.clone(),
                    });
                }
                self.continue_args.clone()
            }
        };
        let mut argv = Vec::new();
        for element in &self.command {
            if element == "{resume}" {
                argv.extend(resume_args.iter().cloned());
            } else if self.prompt == PromptVia::Argument {
                argv.push(element.replace("{prompt}", &prompt));
            } else {
                argv.push(element.clone());
            }
        }
        let stdin = (self.prompt == PromptVia::Stdin).then(|| prompt.into_bytes());
        Ok((argv, stdin))
    }

    /// Refuses a profile that takes credentials when none of them is set on the host
    /// (`is_set`) nor given with `--secret`: the agent would start only to say it is not logged
    /// in.
    pub fn check_credentials(
        &self,
        explicit: &[String],
        is_set: impl Fn(&str) -> bool,
    ) -> Result<(), ProfileError> {
        if self.credentials.is_empty()
            || self
                .credentials
                .iter()
                .any(|c| explicit.contains(c) || is_set(c))
        {
            return Ok(());
        }
        Err(ProfileError::CredentialsMissing {
            profile: self.name.clone(),
            names: self.credentials.clone(),
        })
    }

    /// The credentials to pass: those set on the host (`is_set`), refusing conflicting pairs.
    /// Names already chosen with `--secret` win over the profile's list.
    pub fn credentials_to_pass(
        &self,
        explicit: &[String],
        is_set: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ProfileError> {
        let chosen: Vec<String> = if self.credentials.iter().any(|c| explicit.contains(c)) {
            Vec::new()
        } else {
            self.credentials
                .iter()
                .filter(|c| is_set(c))
                .cloned()
                .collect()
        };
        let all: Vec<&String> = chosen.iter().chain(explicit.iter()).collect();
        for group in &self.conflicts {
            let present: Vec<&String> = group.iter().filter(|g| all.contains(g)).collect();
            if let [first, second, ..] = present.as_slice() {
                return Err(ProfileError::CredentialConflict {
                    profile: self.name.clone(),
                    first: first.to_string(),
                    second: second.to_string(),
                });
            }
        }
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Profile> {
        resolve_all(builtins("0.1.0"), &[]).unwrap()
    }

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn builtins_resolve_and_name_their_images() {
        let profiles = all();
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        for expected in [
            "claude-code",
            "claude-code-fast",
            "claude-code-strong",
            "codex",
            "procedural",
        ] {
            assert!(names.contains(&expected), "{names:?}");
        }
        assert_eq!(
            find(&profiles, "codex").unwrap().image.as_deref(),
            Some("berth/codex:0.1.0")
        );
        let e = find(&profiles, "claud").unwrap_err().to_string();
        assert!(e.contains("`claud`") && e.contains("claude-code"), "{e}");
    }

    #[test]
    fn claude_keeps_its_config_in_the_sessions_directory() {
        let profiles = all();
        for name in ["claude-code", "claude-code-fast", "claude-code-strong"] {
            let p = find(&profiles, name).unwrap();
            let sessions = p.sessions.as_deref().unwrap();
            assert_eq!(
                p.env.get("CLAUDE_CONFIG_DIR").map(String::as_str),
                Some(sessions),
                "{name}"
            );
        }
    }

    #[test]
    fn the_prompt_is_one_argument_byte_exact() {
        let profiles = all();
        let claude = find(&profiles, "claude-code").unwrap();
        let prompt = "fix $HOME `id` \"quoted\" 'single'\nnext line";
        let (argv, stdin) = claude.argv(&words(&[prompt]), &Resume::None).unwrap();
        assert_eq!(argv[2], prompt);
        assert!(stdin.is_none());
        assert!(!argv.iter().any(|a| a == "{resume}"));
        let (argv, _) = claude
            .argv(&words(&["go"]), &Resume::Session("abc".into()))
            .unwrap();
        assert!(argv.ends_with(&words(&["--resume", "abc"])), "{argv:?}");
        let codex = find(&profiles, "codex").unwrap();
        let (argv, _) = codex.argv(&words(&["go"]), &Resume::Continue).unwrap();
        assert_eq!(&argv[..4], &words(&["codex", "exec", "resume", "--last"]));
        assert_eq!(argv.last().unwrap(), "go");
        assert!(matches!(
            claude.argv(&[], &Resume::None),
            Err(ProfileError::PromptMissing { .. })
        ));
    }

    #[test]
    fn procedural_passes_the_command_through() {
        let profiles = all();
        let p = find(&profiles, "procedural").unwrap();
        let (argv, _) = p.argv(&words(&["make", "test"]), &Resume::None).unwrap();
        assert_eq!(argv, words(&["make", "test"]));
    }

    #[test]
    fn stdin_prompts() {
        let layer = (
            "berth.toml".to_string(),
            BTreeMap::from([(
                "mine".to_string(),
                ProfileConfig {
                    command: Some(words(&["agent", "--json"])),
                    prompt: Some("stdin".into()),
                    ..Default::default()
                },
            )]),
        );
        let profiles = resolve_all(builtins("0.1.0"), &[layer]).unwrap();
        let mine = find(&profiles, "mine").unwrap();
        assert_eq!(mine.source, "berth.toml");
        let (argv, stdin) = mine.argv(&words(&["do", "it"]), &Resume::None).unwrap();
        assert_eq!(
            (argv, stdin.unwrap()),
            (words(&["agent", "--json"]), b"do it".to_vec())
        );
    }

    #[test]
    fn config_overrides_fields_and_says_so() {
        let layer = (
            "/w/berth.toml".to_string(),
            BTreeMap::from([(
                "claude-code".to_string(),
                ProfileConfig {
                    image: Some("my/claude:1".into()),
                    disk: Some("10g".into()),
                    ..Default::default()
                },
            )]),
        );
        let profiles = resolve_all(builtins("0.1.0"), &[layer]).unwrap();
        let claude = find(&profiles, "claude-code").unwrap();
        assert_eq!(claude.image.as_deref(), Some("my/claude:1"));
        assert_eq!(claude.disk, Some(10 << 30));
        assert_eq!(claude.output, "claude-stream-json", "other fields stay");
        assert_eq!(claude.source, "built-in, overridden by /w/berth.toml");
    }

    #[test]
    fn invalid_profiles_name_the_field() {
        let bad = |config: ProfileConfig| {
            resolve_all(
                vec![],
                &[("f".into(), BTreeMap::from([("x".to_string(), config)]))],
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad(ProfileConfig {
            command: Some(words(&["a"])),
            prompt: Some("maybe".into()),
            ..Default::default()
        })
        .contains("prompt `maybe`"));
        assert!(bad(ProfileConfig {
            command: Some(words(&["a"])),
            ..Default::default()
        })
        .contains("{prompt}"));
        let e = bad(ProfileConfig {
            prompt: Some("none".into()),
            disk: Some("99999g".into()),
            ..Default::default()
        });
        assert!(e.contains("disk") && e.contains("64 TiB"), "{e}");
        let e = bad(ProfileConfig {
            prompt: Some("none".into()),
            isolation: Some("vm".into()),
            ..Default::default()
        });
        assert!(
            e.contains("isolation") && e.contains("runc or gvisor"),
            "{e}"
        );
        assert!(bad(ProfileConfig {
            command: Some(words(&["a", "{prompt}"])),
            output: Some("xml".into()),
            ..Default::default()
        })
        .contains("output `xml`"));
    }

    #[test]
    fn secrets_are_the_profiles_the_credentials_set_and_the_explicit_ones_once() {
        let profiles = all();
        let claude = find(&profiles, "claude-code").unwrap();
        let set = |n: &str| n == "ANTHROPIC_API_KEY";
        assert_eq!(
            secrets_for(Some(claude), &["TOKEN".into(), "TOKEN".into()], set).unwrap(),
            ["ANTHROPIC_API_KEY", "TOKEN"]
        );
        assert_eq!(
            secrets_for(Some(claude), &["ANTHROPIC_API_KEY".into()], set).unwrap(),
            ["ANTHROPIC_API_KEY"]
        );
        assert_eq!(secrets_for(None, &["A".into()], set).unwrap(), ["A"]);
        let both = |n: &str| n == "ANTHROPIC_API_KEY" || n == "CLAUDE_CODE_OAUTH_TOKEN";
        assert!(secrets_for(Some(claude), &[], both).is_err());
        // None of the credentials: refused here, for every caller (the runner too).
        assert!(matches!(
            secrets_for(Some(claude), &["OTHER".into()], |_| false),
            Err(ProfileError::CredentialsMissing { .. })
        ));
    }

    #[test]
    fn a_profile_with_credentials_needs_one_of_them() {
        let profiles = all();
        let claude = find(&profiles, "claude-code").unwrap();
        let e = claude.check_credentials(&[], |_| false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ANTHROPIC_API_KEY") && text.contains("CLAUDE_CODE_OAUTH_TOKEN"),
            "{text}"
        );
        assert!(claude
            .check_credentials(&[], |n| n == "CLAUDE_CODE_OAUTH_TOKEN")
            .is_ok());
        assert!(claude
            .check_credentials(&["ANTHROPIC_API_KEY".into()], |_| false)
            .is_ok());
        let codex = find(&profiles, "codex").unwrap();
        assert!(codex
            .check_credentials(&[], |_| false)
            .unwrap_err()
            .to_string()
            .contains("OPENAI_API_KEY"));
        // A profile without credentials needs none.
        let procedural = find(&profiles, "procedural").unwrap();
        assert!(procedural.check_credentials(&[], |_| false).is_ok());
    }

    #[test]
    fn berth_s_own_images_are_built_not_pulled() {
        let cmd = |image| image_build_command(image, "0.1.0");
        assert_eq!(
            cmd("berth/claude-code:0.1.0").as_deref(),
            Some("berth image build claude-code")
        );
        assert_eq!(
            cmd("reg.example:5000/team/codex:0.1.0").as_deref(),
            Some("berth image build codex --repository reg.example:5000/team")
        );
        for other in [
            "berth/claude-code:0.2.0",
            "berth/app:0.1.0",
            "claude-code:0.1.0",
            "debian:bookworm-slim",
            "berth/base@sha256:00",
        ] {
            assert_eq!(cmd(other), None, "{other}");
        }
    }

    #[test]
    fn conflicting_credentials_are_refused() {
        let profiles = all();
        let claude = find(&profiles, "claude-code").unwrap();
        let both = |name: &str| name == "ANTHROPIC_API_KEY" || name == "CLAUDE_CODE_OAUTH_TOKEN";
        let e = claude
            .credentials_to_pass(&[], both)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ANTHROPIC_API_KEY")
                && e.contains("CLAUDE_CODE_OAUTH_TOKEN")
                && e.contains("conflict"),
            "{e}"
        );
        assert_eq!(
            claude
                .credentials_to_pass(&[], |n| n == "ANTHROPIC_API_KEY")
                .unwrap(),
            ["ANTHROPIC_API_KEY"]
        );
        // Choosing one explicitly settles it.
        assert_eq!(
            claude
                .credentials_to_pass(&["CLAUDE_CODE_OAUTH_TOKEN".into()], both)
                .unwrap(),
            Vec::<String>::new()
        );
        let e = claude.credentials_to_pass(
            &["CLAUDE_CODE_OAUTH_TOKEN".into(), "ANTHROPIC_API_KEY".into()],
            both,
        );
        assert!(e.is_err());
        assert!(claude
            .credentials_to_pass(&[], |_| false)
            .unwrap()
            .is_empty());
    }
}
