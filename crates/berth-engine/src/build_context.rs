//! Build contexts: a directory made into the tar the engine's builder reads, what its Dockerfile
//! names (stages, base images), and the hash that says whether an image built from it is current.
//!
//! The tar is deterministic — entries sorted, owner root, time zero, mode 0644 or 0755 — so the
//! same files always give the same bytes and the same hash. Markdown files are documentation and
//! stay out of the context: editing `images/README.md` does not make images out of date.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The image label holding [`BuildContext::hash`] of the inputs an image was built from.
pub const BUILD_HASH_LABEL: &str = "berth.build-hash";

/// One file of a build context.
#[derive(Debug, Clone)]
pub struct ContextFile {
    /// The path relative to the context, `/`-separated.
    pub path: String,
    pub data: Vec<u8>,
    pub executable: bool,
}

/// A directory packed for the engine's builder.
#[derive(Debug, Clone)]
pub struct BuildContext {
    tar: Vec<u8>,
    files: Vec<String>,
    dockerfile: Option<String>,
}

impl BuildContext {
    /// Packs `dir` (regular files and directories, recursively; links and special files are left
    /// out, as are `*.md` files).
    pub fn from_dir(dir: &Path) -> io::Result<Self> {
        let mut names = Vec::new();
        collect(dir, "", &mut names)?;
        let mut files = Vec::with_capacity(names.len());
        for rel in names {
            let path = dir.join(&rel);
            let data = std::fs::read(&path)?;
            let executable = is_executable(&std::fs::metadata(&path)?);
            files.push(ContextFile {
                path: rel,
                data,
                executable,
            });
        }
        Self::from_files(files)
    }

    /// Packs `files` (paths relative to the context, `/`-separated); `*.md` files are left out.
    /// The same files give the same tar as [`BuildContext::from_dir`] of a directory holding
    /// them, and so the same hash.
    pub fn from_files(files: Vec<ContextFile>) -> io::Result<Self> {
        let mut files: Vec<ContextFile> = files
            .into_iter()
            .filter(|f| !f.path.ends_with(".md"))
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut builder = tar::Builder::new(Vec::new());
        let mut dockerfile = None;
        for file in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(file.data.len() as u64);
            header.set_mode(if file.executable { 0o755 } else { 0o644 });
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, &file.path, file.data.as_slice())?;
            if file.path == "Dockerfile" {
                dockerfile = Some(String::from_utf8_lossy(&file.data).into_owned());
            }
        }
        let tar = builder.into_inner()?;
        Ok(Self {
            tar,
            files: files.into_iter().map(|f| f.path).collect(),
            dockerfile,
        })
    }

    /// The tar, uncompressed.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// The files packed, relative to the directory, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The text of the context's `Dockerfile`, if it has one.
    pub fn dockerfile(&self) -> Option<&str> {
        self.dockerfile.as_deref()
    }

    /// A hash of everything an image built from this context depends on: the context's bytes,
    /// the target, the build arguments and the ids of the base images (so rebuilding a base makes
    /// the images built on it out of date). Hex SHA-256.
    pub fn hash(
        &self,
        target: &str,
        build_args: &HashMap<String, String>,
        base_image_ids: &[String],
    ) -> String {
        let mut h = Sha256::new();
        h.update(b"berth build hash v1\n");
        h.update((self.tar.len() as u64).to_le_bytes());
        h.update(&self.tar);
        h.update(format!("target={target}\n").as_bytes());
        let args: BTreeMap<_, _> = build_args.iter().collect();
        for (k, v) in args {
            h.update(format!("arg {}={}\n", k.len(), k).as_bytes());
            h.update(format!("{}={}\n", v.len(), v).as_bytes());
        }
        let mut ids = base_image_ids.to_vec();
        ids.sort();
        for id in ids {
            h.update(format!("base {id}\n").as_bytes());
        }
        hex::encode(h.finalize())
    }
}

fn collect(root: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let dir = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue; // the builder's paths are UTF-8; a file it cannot name cannot be COPY'd
        };
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &rel, out)?;
        } else if kind.is_file() && !name.ends_with(".md") {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// One `FROM` line of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
struct From {
    image: String,
    stage: Option<String>,
}

/// The `FROM` lines and the global `ARG` defaults (those before the first `FROM`).
fn parse(dockerfile: &str) -> (Vec<From>, HashMap<String, String>) {
    let mut froms = Vec::new();
    let mut global_args = HashMap::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        if instruction.eq_ignore_ascii_case("ARG") && froms.is_empty() {
            for arg in words {
                if let Some((k, v)) = arg.split_once('=') {
                    global_args.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
        } else if instruction.eq_ignore_ascii_case("FROM") {
            let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
            let Some(image) = rest.first() else {
                continue;
            };
            let stage = match rest.get(1..) {
                Some([as_, name, ..]) if as_.eq_ignore_ascii_case("AS") => {
                    Some(name.to_lowercase())
                }
                _ => None,
            };
            froms.push(From {
                image: (*image).to_string(),
                stage,
            });
        }
    }
    (froms, global_args)
}

/// The stage names a Dockerfile defines (`FROM ... AS name`), in order, lower-cased.
pub fn stages(dockerfile: &str) -> Vec<String> {
    parse(dockerfile)
        .0
        .into_iter()
        .filter_map(|f| f.stage)
        .collect()
}

/// The images a Dockerfile builds from (its `FROM` lines that name neither an earlier stage nor
/// `scratch`), with `$ARG` and `${ARG}` replaced by `build_args`, else by the global defaults.
pub fn base_images(dockerfile: &str, build_args: &HashMap<String, String>) -> Vec<String> {
    let (froms, defaults) = parse(dockerfile);
    let mut seen_stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for from in froms {
        let image = substitute(&from.image, build_args, &defaults);
        let is_stage = seen_stages.iter().any(|s| s.eq_ignore_ascii_case(&image));
        if !is_stage && !image.eq_ignore_ascii_case("scratch") && !images.contains(&image) {
            images.push(image);
        }
        if let Some(stage) = from.stage {
            seen_stages.push(stage);
        }
    }
    images
}

fn substitute(
    text: &str,
    args: &HashMap<String, String>,
    defaults: &HashMap<String, String>,
) -> String {
    let lookup = |name: &str| {
        args.get(name)
            .or_else(|| defaults.get(name))
            .cloned()
            .unwrap_or_default()
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(braced) = after.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                out.push_str(&lookup(&braced[..end]));
                rest = &braced[end + 1..];
                continue;
            }
        }
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if len == 0 {
            out.push('$');
        } else {
            out.push_str(&lookup(&after[..len]));
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = "\
# comment
ARG BASE_IMAGE=debian:bookworm-slim
ARG OTHER=\"x\"
FROM ${BASE_IMAGE} AS base
ARG INSTALL_PACKAGES=1
FROM base AS procedural
from --platform=linux/amd64 procedural as Agent-Node
FROM $BASE_IMAGE
FROM scratch AS empty
FROM berth/base:${OTHER}
";

    fn args(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stages_are_named_in_order() {
        assert_eq!(
            stages(DOCKERFILE),
            ["base", "procedural", "agent-node", "empty"]
        );
    }

    #[test]
    fn base_images_use_build_args_then_defaults_and_skip_stages_and_scratch() {
        assert_eq!(
            base_images(DOCKERFILE, &HashMap::new()),
            ["debian:bookworm-slim", "berth/base:x"]
        );
        assert_eq!(
            base_images(DOCKERFILE, &args(&[("BASE_IMAGE", "berth-test-busybox:1")])),
            ["berth-test-busybox:1", "berth/base:x"]
        );
    }

    #[test]
    fn substitution_keeps_what_it_does_not_understand() {
        let none = HashMap::new();
        assert_eq!(substitute("a$", &none, &none), "a$");
        assert_eq!(substitute("${UNSET}x", &none, &none), "x");
        assert_eq!(substitute("${open", &none, &none), "${open");
    }

    fn context(files: &[(&str, &str)]) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let ctx = BuildContext::from_dir(dir.path()).unwrap();
        (dir, ctx)
    }

    #[test]
    fn the_tar_is_deterministic_and_leaves_markdown_out() {
        let files = [
            ("Dockerfile", "FROM scratch\n"),
            ("sub/b.sh", "echo\n"),
            ("README.md", "docs"),
        ];
        let (_a, first) = context(&files);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (_b, second) = context(&files);
        assert_eq!(first.tar(), second.tar());
        assert_eq!(first.files(), ["Dockerfile", "sub/b.sh"]);
        assert_eq!(first.dockerfile(), Some("FROM scratch\n"));
        let names: Vec<String> = tar::Archive::new(first.tar())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "sub/b.sh"]);
    }

    #[test]
    fn the_hash_changes_with_every_input_but_not_with_markdown() {
        let (_d, ctx) = context(&[("Dockerfile", "FROM scratch\n")]);
        let none = HashMap::new();
        let base = ctx.hash("base", &none, &[]);
        assert_eq!(base.len(), 64);
        assert_eq!(base, ctx.hash("base", &none, &[]));
        assert_ne!(base, ctx.hash("procedural", &none, &[]));
        assert_ne!(base, ctx.hash("base", &args(&[("A", "1")]), &[]));
        assert_ne!(base, ctx.hash("base", &none, &["sha256:1".into()]));
        // Arguments are framed: A=1,B= differs from A=1B=.
        assert_ne!(
            ctx.hash("base", &args(&[("A", "1"), ("B", "")]), &[]),
            ctx.hash("base", &args(&[("A", "1B=")]), &[])
        );
        let (_e, edited) = context(&[("Dockerfile", "FROM scratch \n")]);
        assert_ne!(base, edited.hash("base", &none, &[]));
        let (_f, documented) = context(&[("Dockerfile", "FROM scratch\n"), ("README.md", "x")]);
        assert_eq!(base, documented.hash("base", &none, &[]));
    }
}
