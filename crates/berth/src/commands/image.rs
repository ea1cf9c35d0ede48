//! `berth image build|ls`: berth's sandbox images (`images/Dockerfile`), built once through the
//! Engine API and reused by every run. An image is rebuilt only when its inputs change: the hash
//! of the build context, target, build arguments and base image ids is kept in the image's
//! `berth.build-hash` label, and an image whose tag already carries the same hash is up to date.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_core::ExitStatus;
use berth_engine::build_context::{self, BUILD_HASH_LABEL};
use berth_engine::{BuildContext, BuildProgress, DockerEngine, EngineError, ImageBuild};
use serde::Serialize;

use crate::printer::{data_line, print_json, Printer};

/// The targets `berth image build` builds when none are named, in build order.
pub const DEFAULT_TARGETS: [&str; 4] = berth_core::profile::IMAGE_TARGETS;
/// Where berth's images live in the repository.
pub const IMAGES_DIR: &str = "images";
/// berth's images are `berth/<target>:<berth version>`.
pub const DEFAULT_REPOSITORY: &str = "berth";
/// The target that is berth itself (`deploy/image/`, with this executable), for `berth server`
/// and `berth runner` in containers; not one of the sandbox images of `images/`.
pub const BERTH_TARGET: &str = "berth";
/// The name of the executable in the berth image's build context.
const BERTH_EXECUTABLE: &str = "berth";
/// How many of the builder's last lines are shown when a build fails.
const TAIL_LINES: usize = 20;

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build berth's images, tagged berth/<target>:<berth version>; up-to-date ones are kept.
    Build(BuildArgs),
    /// List berth's images (berth/*).
    Ls(LsArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Stages of the Dockerfile to build, in this order [default: base procedural claude-code
    /// codex]. `berth` builds berth itself (this executable) for `berth server` and `berth
    /// runner` in containers (deploy/compose.yaml).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
    /// The image the base stage starts from (build argument BASE_IMAGE) [default: the
    /// Dockerfile's, debian:bookworm-slim].
    #[arg(long, value_name = "IMAGE")]
    pub base_image: Option<String>,
    /// Install no packages (INSTALL_PACKAGES=0), for a base that already holds what it needs.
    #[arg(long)]
    pub no_install: bool,
    /// A build argument, KEY=VALUE; repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// The directory holding the Dockerfile [default: berth's own images/, built into berth].
    #[arg(long, value_name = "DIR")]
    pub images_dir: Option<PathBuf>,
    /// Build even when an image with the same inputs exists.
    #[arg(long)]
    pub force: bool,
    /// Do not use the engine's layer cache (implies --force), e.g. to pick up new agent releases.
    #[arg(long)]
    pub no_cache: bool,
    /// Tag the images REPOSITORY/<target>:<berth version>.
    #[arg(long, value_name = "REPOSITORY", default_value = DEFAULT_REPOSITORY)]
    pub repository: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// List only the images REPOSITORY/* [default: every image `berth image build` made, with
    /// any --repository, and berth/*].
    #[arg(long, value_name = "REPOSITORY")]
    pub repository: Option<String>,
    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn image(args: ImageArgs, printer: Printer) -> ExitStatus {
    match args.command {
        ImageCommand::Build(args) => build(args, printer).await,
        ImageCommand::Ls(args) => ls(args, printer).await,
    }
}

/// The tag berth gives the image of `target`: `berth/<target>:<berth version>` by default.
pub fn tag_for(repository: &str, target: &str) -> String {
    format!("{repository}/{target}:{}", env!("CARGO_PKG_VERSION"))
}

/// Whether `name` can be the repository part of an image reference: `/`-separated components
/// of lower-case letters, digits and `._-`, the first of which may be a registry with `:port`.
fn valid_repository(name: &str) -> bool {
    let components: Vec<&str> = name.split('/').collect();
    components.iter().enumerate().all(|(i, component)| {
        let (host, port) = match component.split_once(':') {
            Some((host, port)) if i == 0 && components.len() > 1 => (host, Some(port)),
            _ => (*component, None),
        };
        let word = |w: &str| {
            !w.is_empty()
                && w.starts_with(|c: char| c.is_ascii_alphanumeric())
                && w.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        };
        word(host) && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    })
}

/// What happened to one target.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    target: String,
    tag: String,
    /// `built`, `up_to_date` or `failed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_id: Option<String>,
    build_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// An error before anything was built: the message and its hint.
struct Refusal(String, Option<String>);

/// Everything `build` needs, checked before the engine is asked anything.
struct Plan {
    /// Where the context comes from, for messages.
    dir: String,
    context: BuildContext,
    targets: Vec<String>,
    build_args: HashMap<String, String>,
    base_images: Vec<String>,
    /// The Dockerfile installs packages (berth's does, unless INSTALL_PACKAGES=0).
    installs_packages: bool,
}

async fn build(args: BuildArgs, printer: Printer) -> ExitStatus {
    let plans = match plans(&args) {
        Ok(plans) => plans,
        Err(Refusal(message, hint)) => {
            printer.error(&message, hint.as_deref());
            return ExitStatus::Error;
        }
    };
    let engine = match berth_engine::diagnose::check_engine(&super::probe_env()).await {
        Ok((engine, _, _)) => engine,
        Err((diagnosis, _)) => {
            super::print_diagnosis(printer, &diagnosis);
            return ExitStatus::Error;
        }
    };

    let mut outcomes = Vec::new();
    let mut status = ExitStatus::Success;
    'plans: for plan in &plans {
        // The ids of the images the Dockerfile starts from are inputs too: a rebuilt base makes
        // everything on it out of date. A base the engine has to pull first counts as absent, so
        // the next build finds its id and rebuilds once more, from the layer cache.
        let mut base_ids = Vec::new();
        for base in &plan.base_images {
            match berth_engine::Engine::inspect_image(&engine, base).await {
                Ok(Some(info)) => base_ids.push(info.id),
                Ok(None) => {
                    if !args.json {
                        printer.info(&format!(
                            "{base} is not present; the engine will try to pull it"
                        ));
                    }
                }
                Err(e) => {
                    printer.error(&format!("inspecting {base} failed: {e}"), None);
                    status = ExitStatus::Error;
                    break 'plans;
                }
            }
        }
        if !args.json {
            printer.info(&format!(
                "building from {} ({} files)",
                plan.dir,
                plan.context.files().len()
            ));
        }
        for target in &plan.targets {
            let outcome = build_one(&engine, plan, target, &base_ids, &args, printer).await;
            let failed = outcome.status == "failed";
            outcomes.push(outcome);
            if failed {
                // Later targets build on earlier ones; stop at the first failure.
                status = ExitStatus::Error;
                break 'plans;
            }
        }
    }
    if args.json {
        print_json(&outcomes);
    } else {
        for o in outcomes.iter().filter(|o| o.status != "failed") {
            data_line(&format!(
                "{:<32}  {:<10}  {}",
                o.tag,
                o.status,
                o.image_id.as_deref().map(short_id).unwrap_or_default()
            ));
        }
    }
    status
}

/// One build context per kind of target: the sandbox images of `images/` (or `--images-dir`),
/// and berth's own image when `berth` is named without `--images-dir`. Both are checked before
/// the engine is asked anything.
fn plans(args: &BuildArgs) -> Result<Vec<Plan>, Refusal> {
    let wants_berth = args.images_dir.is_none() && args.targets.iter().any(|t| t == BERTH_TARGET);
    let others: Vec<String> = args
        .targets
        .iter()
        .filter(|t| !(wants_berth && *t == BERTH_TARGET))
        .cloned()
        .collect();
    let mut plans = Vec::new();
    if !wants_berth || !others.is_empty() {
        plans.push(plan(args, others)?);
    }
    if wants_berth {
        plans.push(berth_plan(args)?);
    }
    Ok(plans)
}

/// berth's own image: `deploy/image/` as embedded, plus the executable running now (read through
/// `/proc/self/exe`, which still works when cargo has replaced the file meanwhile).
fn berth_plan(args: &BuildArgs) -> Result<Plan, Refusal> {
    let executable = std::fs::read("/proc/self/exe").map_err(|e| {
        Refusal(
            format!("cannot read berth's own executable (/proc/self/exe): {e}"),
            Some(
                "the berth image holds the berth that builds it; run berth from a readable file"
                    .into(),
            ),
        )
    })?;
    let mut files: Vec<build_context::ContextFile> = embedded::BERTH_IMAGE_FILES
        .iter()
        .map(|(path, data, executable)| build_context::ContextFile {
            path: path.to_string(),
            data: data.to_vec(),
            executable: *executable,
        })
        .collect();
    let size = executable.len();
    files.push(build_context::ContextFile {
        path: BERTH_EXECUTABLE.into(),
        data: executable,
        executable: true,
    });
    let context = BuildContext::from_files(files)
        .map_err(|e| Refusal(format!("cannot pack berth's own image context: {e}"), None))?;
    let Some(dockerfile) = context.dockerfile() else {
        return Err(Refusal(
            "berth was built without deploy/image/Dockerfile".into(),
            Some("build berth from a complete checkout".into()),
        ));
    };
    let build_args = build_args(args)?;
    let base_images = build_context::base_images(dockerfile, &build_args);
    let installs_packages = build_args.get("INSTALL_PACKAGES").map(String::as_str) != Some("0");
    Ok(Plan {
        dir: format!(
            "berth {}'s own deploy/image/ and this berth executable ({:.1} MB)",
            env!("CARGO_PKG_VERSION"),
            size as f64 / 1e6
        ),
        context,
        targets: vec![BERTH_TARGET.to_string()],
        build_args,
        base_images,
        installs_packages,
    })
}

/// The sandbox images: `targets` (the default ones when empty) from `images/` or `--images-dir`.
fn plan(args: &BuildArgs, targets: Vec<String>) -> Result<Plan, Refusal> {
    if !valid_repository(&args.repository) {
        return Err(Refusal(
            format!(
                "--repository `{}` is not an image repository",
                args.repository
            ),
            Some(
                "use lower-case letters, digits and ._-/, e.g. berth or registry.example.com/berth"
                    .into(),
            ),
        ));
    }
    let (dir, context) = match &args.images_dir {
        Some(dir) => {
            let context = BuildContext::from_dir(dir).map_err(|e| {
                Refusal(
                    format!("cannot read the build context {}: {e}", dir.display()),
                    Some("pass --images-dir DIR, a directory with a Dockerfile".into()),
                )
            })?;
            (dir.display().to_string(), context)
        }
        None => (
            format!("berth {}'s own {IMAGES_DIR}/", env!("CARGO_PKG_VERSION")),
            embedded_context().map_err(|e| {
                Refusal(
                    format!("cannot pack berth's own {IMAGES_DIR}/: {e}"),
                    Some("pass --images-dir DIR, a directory with a Dockerfile".into()),
                )
            })?,
        ),
    };
    let Some(dockerfile) = context.dockerfile() else {
        return Err(Refusal(
            format!("{dir} has no Dockerfile"),
            Some("pass --images-dir DIR, a directory with a Dockerfile".into()),
        ));
    };
    let stages = build_context::stages(dockerfile);
    let targets: Vec<String> = if targets.is_empty() {
        DEFAULT_TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        targets
    };
    for target in &targets {
        if !stages.contains(target) {
            let also = if args.images_dir.is_none() {
                format!(", and `{BERTH_TARGET}` (berth itself)")
            } else {
                String::new()
            };
            return Err(Refusal(
                format!("the Dockerfile of {dir} has no stage `{target}`"),
                Some(format!("its stages are: {}{also}", stages.join(", "))),
            ));
        }
    }
    let build_args = build_args(args)?;
    let base_images = build_context::base_images(dockerfile, &build_args);
    let installs_packages = dockerfile.contains("INSTALL_PACKAGES")
        && build_args.get("INSTALL_PACKAGES").map(String::as_str) != Some("0");
    Ok(Plan {
        dir,
        context,
        targets,
        build_args,
        base_images,
        installs_packages,
    })
}

/// `--build-arg K=V`, then `--base-image` and `--no-install`, which must not contradict them.
fn build_args(args: &BuildArgs) -> Result<HashMap<String, String>, Refusal> {
    let mut out = HashMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(Refusal(
                    format!("--build-arg `{arg}` is not KEY=VALUE"),
                    Some("e.g. --build-arg CLAUDE_CODE_VERSION=2.1.0".into()),
                ))
            }
        }
    }
    let mut set = |key: &str, value: String, flag: &str| match out.get(key) {
        Some(given) if *given != value => Err(Refusal(
            format!("{flag} and --build-arg {key}={given} disagree"),
            Some(format!("give {key} once")),
        )),
        _ => {
            out.insert(key.to_string(), value);
            Ok(())
        }
    };
    if let Some(base) = &args.base_image {
        set("BASE_IMAGE", base.clone(), "--base-image")?;
    }
    if args.no_install {
        set("INSTALL_PACKAGES", "0".into(), "--no-install")?;
    }
    Ok(out)
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/images.rs"));
}

/// berth's `images/`, embedded in the binary when it was built.
fn embedded_context() -> std::io::Result<BuildContext> {
    BuildContext::from_files(
        embedded::FILES
            .iter()
            .map(|(path, data, executable)| build_context::ContextFile {
                path: path.to_string(),
                data: data.to_vec(),
                executable: *executable,
            })
            .collect(),
    )
}

async fn build_one(
    engine: &DockerEngine,
    plan: &Plan,
    target: &str,
    base_ids: &[String],
    args: &BuildArgs,
    printer: Printer,
) -> Outcome {
    let tag = tag_for(&args.repository, target);
    let hash = plan.context.hash(target, &plan.build_args, base_ids);
    let mut outcome = Outcome {
        target: target.to_string(),
        tag: tag.clone(),
        status: "failed",
        image_id: None,
        build_hash: hash.clone(),
        seconds: None,
        error: None,
    };
    if !args.force && !args.no_cache {
        match engine.image_labels(&tag).await {
            Ok(Some(labels)) if labels.get(BUILD_HASH_LABEL) == Some(&hash) => {
                if !args.json {
                    printer.info(&format!("{tag} is up to date"));
                }
                outcome.status = "up_to_date";
                outcome.image_id = berth_engine::Engine::inspect_image(engine, &tag)
                    .await
                    .ok()
                    .flatten()
                    .map(|i| i.id);
                return outcome;
            }
            Ok(_) => {}
            Err(e) => {
                printer.error(&format!("inspecting {tag} failed: {e}"), None);
                outcome.error = Some(e.to_string());
                return outcome;
            }
        }
    }

    let request = ImageBuild {
        context_tar: plan.context.tar().to_vec(),
        dockerfile: "Dockerfile".into(),
        target: target.to_string(),
        tag: tag.clone(),
        build_args: plan.build_args.clone(),
        labels: HashMap::from([(BUILD_HASH_LABEL.to_string(), hash)]),
        no_cache: args.no_cache,
    };
    let mut display = Display::new(target, args.json, printer);
    let started = Instant::now();
    let result = engine
        .build_image(&request, &mut |p| display.progress(p))
        .await;
    display.finish();
    outcome.seconds = Some(round(started.elapsed()));
    match result {
        Ok(id) => {
            if !args.json {
                printer.info(&format!(
                    "built {tag} ({}) in {:.1}s",
                    short_id(&id),
                    started.elapsed().as_secs_f64()
                ));
            }
            outcome.status = "built";
            outcome.image_id = Some(id);
        }
        Err(e) => {
            if !args.json {
                display.print_tail();
            }
            printer.error(
                &format!("building {tag} failed: {e}"),
                Some(&failure_hint(&e, &plan.build_args, plan.installs_packages)),
            );
            outcome.error = Some(e.to_string());
        }
    }
    outcome
}

fn failure_hint(
    e: &EngineError,
    build_args: &HashMap<String, String>,
    installs_packages: bool,
) -> String {
    match e {
        EngineError::BuildFailed {
            step: Some(step), ..
        } if step.contains(" : FROM ") => {
            let base = build_args
                .get("BASE_IMAGE")
                .map(|b| format!(" ({b})"))
                .unwrap_or_default();
            format!(
                "the base image{base} is missing and could not be pulled: build or load it \
                 locally, or pass --base-image IMAGE with one that is present"
            )
        }
        EngineError::BuildFailed {
            step: Some(step), ..
        } if installs_packages && step.contains(" : RUN ") => {
            "a RUN step failed (the lines above are its output); installing packages needs the \
             network, and --no-install skips it for a base that already has what it needs"
                .into()
        }
        EngineError::BuildFailed { .. } => {
            "the failed step's last output, if it printed any, is above; --no-cache rebuilds \
             every step"
                .into()
        }
        _ => "`berth doctor` checks the engine".into(),
    }
}

fn round(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// `sha256:0123456789ab...` as `0123456789ab`.
fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// How a build shows on stderr: a spinner with the current step on a terminal, plain step lines
/// otherwise, nothing with --json. The last lines are kept to show when the build fails.
struct Display {
    target: String,
    printer: Printer,
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    tail: VecDeque<String>,
}

impl Display {
    fn new(target: &str, json: bool, printer: Printer) -> Self {
        let terminal = !json && std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(format!("building {target}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            target: target.to_string(),
            printer,
            bar,
            plain: !json && !terminal,
            tail: VecDeque::with_capacity(TAIL_LINES),
        }
    }

    fn progress(&mut self, p: BuildProgress) {
        let is_step = p.step.as_deref() == Some(p.message.as_str());
        if !is_step && is_builder_chatter(&p.message) {
            return;
        }
        if is_step {
            // A new step: only its own output is worth showing if it fails.
            self.tail.clear();
        } else {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(p.message.clone());
        }
        if let Some(bar) = &self.bar {
            let step = p.step.as_deref().unwrap_or("");
            // The terminal's width cuts the message ({wide_msg}); white space runs go first.
            if is_step || step.is_empty() {
                bar.set_message(one_line(&p.message, 300));
            } else {
                bar.set_message(format!(
                    "{}  | {}",
                    one_line(step, 120),
                    one_line(&p.message, 180)
                ));
            }
        } else if self.plain && is_step {
            self.printer
                .info(&format!("{}: {}", self.target, one_line(&p.message, 120)));
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn print_tail(&self) {
        if self.tail.is_empty() {
            return;
        }
        self.printer.info(&format!(
            "last output of the failed step of {}:",
            self.target
        ));
        for line in &self.tail {
            eprintln_line(line);
        }
    }
}

/// The classic builder's own lines between a step's output (`---> Running in 0123abcd`,
/// `Removing intermediate container 0123abcd`, `---> Using cache`).
fn is_builder_chatter(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("--->") || line.starts_with("Removing intermediate container ")
}

/// `text` with runs of white space made one space, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        joined
    } else {
        let mut cut: String = joined.chars().take(max.saturating_sub(3)).collect();
        cut.push_str("...");
        cut
    }
}

fn eprintln_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "  {line}");
}

#[derive(Debug, Serialize)]
struct Listed {
    tag: String,
    id: String,
    size_bytes: u64,
    created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_hash: Option<String>,
}

async fn ls(args: LsArgs, printer: Printer) -> ExitStatus {
    let engine = match berth_engine::diagnose::check_engine(&super::probe_env()).await {
        Ok((engine, _, _)) => engine,
        Err((diagnosis, _)) => {
            super::print_diagnosis(printer, &diagnosis);
            return ExitStatus::Error;
        }
    };
    // Every image berth built carries its build hash, whatever repository it was tagged in.
    let repository = args.repository.as_deref().unwrap_or(DEFAULT_REPOSITORY);
    let prefix = format!("{repository}/");
    let mut images = engine.list_images_matching(&format!("{prefix}*")).await;
    if args.repository.is_none() {
        if let (Ok(images), Ok(built)) = (
            &mut images,
            engine.list_images_labelled(BUILD_HASH_LABEL).await,
        ) {
            images.extend(built);
        }
    }
    let images = match images {
        Ok(images) => images,
        Err(e) => {
            printer.error(
                &format!("listing images failed: {e}"),
                Some("`berth doctor` checks the engine"),
            );
            return ExitStatus::Error;
        }
    };
    let mut rows: Vec<Listed> = images
        .iter()
        .flat_map(|image| {
            let listed = image.labels.contains_key(BUILD_HASH_LABEL) && args.repository.is_none();
            let prefix = &prefix;
            image
                .tags
                .iter()
                .filter(move |t| listed || t.starts_with(prefix.as_str()))
                .map(|tag| Listed {
                    tag: tag.clone(),
                    id: image.id.clone(),
                    size_bytes: image.size_bytes,
                    created: rfc3339(image.created),
                    build_hash: image.labels.get(BUILD_HASH_LABEL).cloned(),
                })
        })
        .collect();
    rows.sort_by(|a, b| a.tag.cmp(&b.tag));
    rows.dedup_by(|a, b| a.tag == b.tag);
    if args.json {
        print_json(&rows);
        return ExitStatus::Success;
    }
    if rows.is_empty() {
        printer.info("no berth images; `berth image build` builds them");
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<32}  {:<12}  {:>9}  CREATED",
        "TAG", "IMAGE ID", "SIZE"
    ));
    for r in &rows {
        data_line(&format!(
            "{:<32}  {:<12}  {:>9}  {}",
            r.tag,
            short_id(&r.id),
            human_size(r.size_bytes),
            r.created
        ));
    }
    ExitStatus::Success
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{size:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(build_args: &[&str], base: Option<&str>, no_install: bool) -> BuildArgs {
        BuildArgs {
            targets: Vec::new(),
            base_image: base.map(str::to_string),
            no_install,
            build_args: build_args.iter().map(|s| s.to_string()).collect(),
            images_dir: None,
            force: false,
            no_cache: false,
            repository: DEFAULT_REPOSITORY.into(),
            json: false,
        }
    }

    #[test]
    fn tags_carry_berth_s_version() {
        assert_eq!(
            tag_for(DEFAULT_REPOSITORY, "base"),
            format!("berth/base:{}", env!("CARGO_PKG_VERSION"))
        );
        for good in ["berth", "registry.example.com:5000/team/berth", "a_b-c"] {
            assert!(valid_repository(good), "{good}");
        }
        for bad in [
            "",
            "Berth",
            "/berth",
            "berth/",
            "a b",
            "berth:tag",
            "r:x/berth",
            "a/b:1",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    #[test]
    fn build_args_combine_and_refuse_contradictions() {
        let got = build_args(&args(&["A=1", "B=x=y", "C="], Some("img:1"), true))
            .ok()
            .unwrap();
        assert_eq!(got.get("A").map(String::as_str), Some("1"));
        assert_eq!(got.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(got.get("C").map(String::as_str), Some(""));
        assert_eq!(got.get("BASE_IMAGE").map(String::as_str), Some("img:1"));
        assert_eq!(got.get("INSTALL_PACKAGES").map(String::as_str), Some("0"));

        assert!(build_args(&args(&["BASE_IMAGE=img:1"], Some("img:1"), false)).is_ok());
        let Err(Refusal(message, _)) = build_args(&args(&["BASE_IMAGE=a"], Some("b"), false))
        else {
            panic!("contradiction accepted")
        };
        assert!(message.contains("--base-image"), "{message}");
        for bad in ["noequals", "=v"] {
            let Err(Refusal(message, _)) = build_args(&args(&[bad], None, false)) else {
                panic!("{bad} accepted")
            };
            assert!(message.contains(bad), "{message}");
        }
    }

    #[test]
    fn the_embedded_images_are_the_repository_s() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images");
        let from_dir = BuildContext::from_dir(&dir).unwrap();
        let embedded = embedded_context().unwrap();
        assert_eq!(embedded.files(), from_dir.files());
        assert!(embedded.files().contains(&"add-agent-user.sh".to_string()));
        assert_eq!(embedded.tar(), from_dir.tar());
    }

    #[test]
    fn the_repository_dockerfile_has_every_default_target() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images");
        let context = BuildContext::from_dir(&dir).unwrap();
        let stages = build_context::stages(context.dockerfile().unwrap());
        for target in DEFAULT_TARGETS {
            assert!(stages.contains(&target.to_string()), "{target}: {stages:?}");
        }
        // Build order is file order: each default target comes after the ones before it.
        let positions: Vec<usize> = DEFAULT_TARGETS
            .iter()
            .map(|t| stages.iter().position(|s| s == t).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{stages:?}");
    }

    #[test]
    fn the_berth_target_packs_this_executable_beside_deploy_image() {
        let mut berth = args(&[], None, false);
        berth.targets = vec!["base".into(), BERTH_TARGET.into()];
        let both = plans(&berth).ok().unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].targets, ["base"]);
        assert_eq!(both[1].targets, [BERTH_TARGET]);
        let context = &both[1].context;
        assert_eq!(context.files(), ["Dockerfile", BERTH_EXECUTABLE]);
        let stages = build_context::stages(context.dockerfile().unwrap());
        assert_eq!(stages, [BERTH_TARGET]);
        assert_eq!(both[1].base_images, ["debian:bookworm-slim"]);
        // The executable in the context is the one running (here the test binary), byte for
        // byte, and executable.
        let running = std::fs::read("/proc/self/exe").unwrap();
        let mut tar = tar::Archive::new(context.tar());
        let entry = tar
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_str() == Some(BERTH_EXECUTABLE))
            .unwrap();
        assert_eq!(entry.header().mode().unwrap(), 0o755);
        assert_eq!(entry.header().size().unwrap(), running.len() as u64);

        // Alone, `berth` is the only context; with --images-dir it is that Dockerfile's stage.
        berth.targets = vec![BERTH_TARGET.into()];
        assert_eq!(plans_targets(&berth), [vec![BERTH_TARGET.to_string()]]);
        berth.images_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images"));
        let Err(Refusal(message, hint)) = plans(&berth) else {
            panic!("images/ has no berth stage")
        };
        assert!(message.contains("no stage `berth`"), "{message}");
        assert!(!hint.unwrap().contains("berth itself"));
    }

    fn plans_targets(args: &BuildArgs) -> Vec<Vec<String>> {
        plans(args)
            .ok()
            .unwrap()
            .into_iter()
            .map(|p| p.targets)
            .collect()
    }

    #[test]
    fn sizes_and_ids_are_short() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_990_000), "2.0MB");
        assert_eq!(human_size(1_234_567_890), "1.2GB");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(one_line("RUN a  \\\n   b", 80), "RUN a \\ b");
        assert_eq!(one_line("Step 5/12 : RUN échos", 12), "Step 5/12...");
    }
}
