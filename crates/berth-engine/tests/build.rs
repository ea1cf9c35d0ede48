//! Image builds against the real engine: the repository's `images/Dockerfile`, built from the
//! local busybox test image (nothing can be pulled here) with `INSTALL_PACKAGES=0`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_engine::build_context::BUILD_HASH_LABEL;
use berth_engine::{BuildContext, BuildProgress, DockerEngine, Endpoint, EngineError, ImageBuild};

/// The local test image (scripts/test-image.sh), built when missing.
fn test_image() -> String {
    let script = repo().join("scripts/test-image.sh");
    // flock serialises with other test binaries building the same image.
    let out = Command::new("flock")
        .arg("/tmp/berth-test-image.lock")
        .arg(&script)
        .arg("build")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the test image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn engine() -> DockerEngine {
    let host = std::env::var("DOCKER_HOST").ok();
    let endpoint = Endpoint::from_docker_host(host.as_deref()).unwrap();
    DockerEngine::connect(&endpoint).await.unwrap().0
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Removes the images a test tagged, whether it passes or panics.
struct Cleanup(Vec<String>);

impl Cleanup {
    fn tag(&mut self, repository: &str) -> String {
        let tag = format!("{repository}:{}", unique());
        self.0.push(tag.clone());
        tag
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker")
                .args(["image", "rm", "-f", tag])
                .output();
        }
    }
}

/// `docker run --rm IMAGE ARGS...`: stdout, asserting success.
fn docker_run(image: &str, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["run", "--rm", image])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker run {image} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn build_args(base: &str) -> HashMap<String, String> {
    HashMap::from([
        ("BASE_IMAGE".to_string(), base.to_string()),
        ("INSTALL_PACKAGES".to_string(), "0".to_string()),
    ])
}

async fn build(
    engine: &DockerEngine,
    context: &BuildContext,
    target: &str,
    tag: &str,
    args: &HashMap<String, String>,
) -> (Result<String, EngineError>, Vec<BuildProgress>) {
    let request = ImageBuild {
        context_tar: context.tar().to_vec(),
        dockerfile: "Dockerfile".into(),
        target: target.into(),
        tag: tag.into(),
        build_args: args.clone(),
        labels: HashMap::from([(
            BUILD_HASH_LABEL.to_string(),
            context.hash(target, args, &[]),
        )]),
        no_cache: false,
    };
    let mut lines = Vec::new();
    let result = engine.build_image(&request, &mut |p| lines.push(p)).await;
    (result, lines)
}

struct Inspected {
    id: String,
    user: String,
    working_dir: String,
    env: Vec<String>,
    labels: HashMap<String, String>,
}

async fn inspect(engine: &DockerEngine, image: &str) -> Inspected {
    let inspect = engine.raw().inspect_image(image).await.unwrap();
    let config = inspect.config.unwrap();
    Inspected {
        id: inspect.id.unwrap(),
        user: config.user.unwrap_or_default(),
        working_dir: config.working_dir.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
    }
}

#[tokio::test]
async fn every_target_builds_from_a_local_base_and_runs_as_agent() {
    let base_image = test_image();
    // The Dockerfile's user creation falls back to writing /etc/passwd when the base has no
    // useradd or adduser; Debian's static busybox has neither applet.
    let applets = docker_run(&base_image, &["ls", "/bin"]);
    println!(
        "busybox applets for users: {:?}",
        applets
            .lines()
            .filter(|l| l.contains("adduser") || l.contains("addgroup"))
            .collect::<Vec<_>>()
    );

    let engine = engine().await;
    let context = BuildContext::from_dir(&repo().join("images")).unwrap();
    assert!(context.files().contains(&"Dockerfile".to_string()));
    assert!(context.files().contains(&"add-agent-user.sh".to_string()));
    let args = build_args(&base_image);
    let mut cleanup = Cleanup(Vec::new());

    // base
    let tag = cleanup.tag("berth-test-base");
    let (result, lines) = build(&engine, &context, "base", &tag, &args).await;
    let id = result.unwrap_or_else(|e| panic!("building base failed: {e}\n{lines:#?}"));
    assert!(
        lines
            .iter()
            .any(|l| l.message.starts_with("Step ") && l.message.contains("add-agent-user.sh")),
        "{lines:#?}"
    );
    // The package step says what the local base lacks, unless the layer cache answered for it.
    let package_step: Vec<&BuildProgress> = lines
        .iter()
        .filter(|l| {
            l.step
                .as_deref()
                .is_some_and(|s| s.contains("INSTALL_PACKAGES\" = 1"))
        })
        .collect();
    assert!(
        package_step.iter().any(|l| l
            .message
            .contains("INSTALL_PACKAGES=0 and the base image has no git"))
            || package_step
                .iter()
                .any(|l| l.message.contains("Using cache")),
        "{lines:#?}"
    );
    let image = inspect(&engine, &tag).await;
    assert_eq!(image.id, id);
    assert_eq!(image.user, "agent");
    assert_eq!(image.working_dir, "/workspace");
    assert!(
        image.env.contains(&"HOME=/home/agent".to_string()),
        "{:?}",
        image.env
    );
    assert_eq!(
        image.labels.get(BUILD_HASH_LABEL),
        Some(&context.hash("base", &args, &[]))
    );
    assert_eq!(
        image.labels.get("berth.image").map(String::as_str),
        Some("base")
    );
    assert_eq!(
        engine.image_labels(&tag).await.unwrap().unwrap(),
        image.labels
    );
    assert_eq!(docker_run(&tag, &["id", "-u"]).trim(), "1000");
    // Group, name, working directory, owners, and no left-over user script, in one container.
    assert_eq!(
        docker_run(
            &tag,
            &[
                "sh",
                "-c",
                "id -g; id -un; pwd; stat -c %u:%g /workspace /home/agent; \
                 test -e /tmp/add-agent-user.sh && echo left || echo gone"
            ]
        ),
        "1000\nagent\n/workspace\n1000:1000\n1000:1000\ngone\n"
    );

    // procedural, claude-code and codex: the same user; the agents' settings are in place.
    for target in ["procedural", "claude-code", "codex"] {
        let tag = cleanup.tag(&format!("berth-test-{target}"));
        let (result, lines) = build(&engine, &context, target, &tag, &args).await;
        result.unwrap_or_else(|e| panic!("building {target} failed: {e}\n{lines:#?}"));
        let image = inspect(&engine, &tag).await;
        assert_eq!(image.user, "agent", "{target}");
        assert_eq!(image.working_dir, "/workspace", "{target}");
        assert_eq!(
            image.labels.get("berth.image").map(String::as_str),
            Some(target)
        );
        assert_eq!(docker_run(&tag, &["id", "-u"]).trim(), "1000", "{target}");
        if target == "claude-code" {
            for var in ["DISABLE_AUTOUPDATER=1", "IS_SANDBOX=1", "HOME=/home/agent"] {
                assert!(image.env.contains(&var.to_string()), "{:?}", image.env);
            }
        }
        if target == "codex" {
            let config = docker_run(&tag, &["cat", "/etc/codex/config.toml"]);
            assert!(
                config.contains("sandbox_mode = \"danger-full-access\""),
                "{config}"
            );
        }
    }

    // The README's recipe for a custom executor image: FROM the base, add something, stay agent.
    let custom_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        custom_dir.path().join("Dockerfile"),
        "ARG BERTH_BASE\nFROM ${BERTH_BASE} AS executor\nUSER 0\n\
         RUN echo custom > /etc/custom-executor\nUSER agent\n",
    )
    .unwrap();
    let custom = BuildContext::from_dir(custom_dir.path()).unwrap();
    let custom_args = HashMap::from([("BERTH_BASE".to_string(), tag_of(&cleanup, "base"))]);
    let custom_tag = cleanup.tag("berth-test-custom");
    let (result, lines) = build(&engine, &custom, "executor", &custom_tag, &custom_args).await;
    result.unwrap_or_else(|e| panic!("building the custom image failed: {e}\n{lines:#?}"));
    assert_eq!(
        docker_run(
            &custom_tag,
            &["sh", "-c", "id -un; cat /etc/custom-executor"]
        ),
        "agent\ncustom\n"
    );
    assert_eq!(
        inspect(&engine, &custom_tag).await.working_dir,
        "/workspace"
    );

    // Every image is found by name pattern, with its labels.
    let listed = engine
        .list_images_matching("berth-test-base:*")
        .await
        .unwrap();
    assert!(
        listed.iter().any(|i| i.id == id
            && i.tags.contains(&cleanup.0[0])
            && i.size_bytes > 0
            && i.created > 0),
        "{listed:#?}"
    );

    // Removal through the engine, and removing again is fine.
    engine.remove_image(&custom_tag).await.unwrap();
    engine.remove_image(&custom_tag).await.unwrap();
    assert!(engine.image_labels(&custom_tag).await.unwrap().is_none());
}

fn tag_of(cleanup: &Cleanup, repository_suffix: &str) -> String {
    cleanup
        .0
        .iter()
        .find(|t| t.starts_with(&format!("berth-test-{repository_suffix}:")))
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_failing_step_is_an_error_naming_the_step() {
    let base_image = test_image();
    let engine = engine().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        // The failing step is the first that would commit a layer, so a failed build leaves no
        // untagged image behind.
        format!(
            "FROM {base_image} AS broken\n\
             RUN echo about to fail && exit 3\nRUN echo never\n"
        ),
    )
    .unwrap();
    let context = BuildContext::from_dir(dir.path()).unwrap();
    let mut cleanup = Cleanup(Vec::new());
    let tag = cleanup.tag("berth-test-broken");

    let (result, lines) = build(&engine, &context, "broken", &tag, &HashMap::new()).await;
    let Err(EngineError::BuildFailed { step, message }) = result else {
        panic!("expected a failed build, got {result:?}");
    };
    let step = step.unwrap();
    assert!(
        step.contains("RUN echo about to fail && exit 3"),
        "the failing step is named: {step}"
    );
    assert!(message.contains("non-zero code: 3"), "{message}");
    let shown = EngineError::BuildFailed {
        step: Some(step.clone()),
        message: message.clone(),
    }
    .to_string();
    assert!(shown.contains(&step) && shown.contains(&message), "{shown}");
    assert!(
        lines
            .iter()
            .any(|l| l.message == "about to fail" && l.step.as_deref() == Some(step.as_str())),
        "the step's output arrives with its step: {lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.message.contains("never")));
    assert!(engine.image_labels(&tag).await.unwrap().is_none());

    // A target the Dockerfile does not have fails before any step.
    let (result, _) = build(&engine, &context, "nope", &tag, &HashMap::new()).await;
    match result {
        Err(EngineError::BuildFailed { message, .. }) => {
            assert!(message.contains("nope"), "{message}")
        }
        other => panic!("expected a failed build, got {other:?}"),
    }
}
