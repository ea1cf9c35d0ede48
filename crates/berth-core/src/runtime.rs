//! Container runtimes the engine offers, and whether gVisor is usable among them: a pure rule
//! over what `docker info` lists, shared by `berth doctor`, the launch path and the runner's
//! tags.

use crate::spec::{Isolation, GVISOR_NET_RUNTIME, GVISOR_RUNTIME};

/// One runtime as the engine lists it (`Runtimes` in `docker info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRuntime {
    pub name: String,
    pub path: Option<String>,
    pub args: Vec<String>,
}

/// What every gVisor runtime must be registered with, and why:
/// - `--host-fifo=open`: berth's output pipes (`/berth/io`) are FIFOs made on the host;
/// - `--host-uds=open`: the egress forwarder connects to the proxy's unix sockets made on the
///   host (`/berth/egress`).
///
/// Both let the sandbox open only FIFOs and sockets bind-mounted into it, as under runc.
pub const GVISOR_REQUIRED_ARGS: [&str; 2] = ["--host-fifo=open", "--host-uds=open"];

/// The gVisor runtimes berth uses, with the arguments they are registered with.
pub fn gvisor_runtimes() -> [(&'static str, [&'static str; 3]); 2] {
    let [fifo, uds] = GVISOR_REQUIRED_ARGS;
    [
        (GVISOR_RUNTIME, ["--network=none", fifo, uds]),
        (GVISOR_NET_RUNTIME, ["--network=host", fifo, uds]),
    ]
}

/// The `runtimes` entry of `/etc/docker/daemon.json` that makes gVisor usable (merged into the
/// file's other keys).
pub fn gvisor_daemon_json() -> String {
    let entries: Vec<String> = gvisor_runtimes()
        .iter()
        .map(|(name, args)| {
            let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "    \"{name}\": {{\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [{}]}}",
                args.join(", ")
            )
        })
        .collect();
    format!("  \"runtimes\": {{\n{}\n  }}", entries.join(",\n"))
}

/// How to reload the engine's configuration without restarting it (running containers stay).
pub const RELOAD_COMMAND: &str = "sudo kill -HUP $(pidof dockerd)";

/// The hint for an engine without a usable gVisor: install, the daemon.json lines, the reload.
pub fn gvisor_hint() -> String {
    format!(
        "install gVisor (`sudo apt-get install runsc` on Debian and Ubuntu, or see gvisor.dev), add to /etc/docker/daemon.json, keeping its other keys:\n{}\nthen reload the engine without restarting it: {RELOAD_COMMAND}",
        gvisor_daemon_json()
    )
}

/// Why `runtime` (one of [`gvisor_runtimes`]) cannot be used on an engine offering `offered`;
/// `None`: it can.
pub fn gvisor_problem(offered: &[EngineRuntime], runtime: &str) -> Option<String> {
    let Some(found) = offered.iter().find(|r| r.name == runtime) else {
        let mut names: Vec<&str> = offered.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        return Some(format!(
            "the engine has no `{runtime}` runtime (gVisor); it offers: {}",
            if names.is_empty() {
                "none listed".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    let missing: Vec<&str> = GVISOR_REQUIRED_ARGS
        .into_iter()
        .filter(|arg| !has_arg(&found.args, arg))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the engine's `{runtime}` runtime lacks {} among its runtimeArgs: berth's output pipes and egress sockets are made on the host",
            missing.join(" and ")
        )
    })
}

/// Whether `args` has `wanted` (`--flag=value`), also spelt `-flag=value` or with a value that
/// allows more (`--host-uds=all`).
fn has_arg(args: &[String], wanted: &str) -> bool {
    let (flag, value) = wanted
        .trim_start_matches('-')
        .split_once('=')
        .unwrap_or((wanted, ""));
    args.iter().any(|a| {
        let Some((f, v)) = a.trim_start_matches('-').split_once('=') else {
            return false;
        };
        f == flag && (v == value || (flag == "host-uds" && v == "all"))
    })
}

/// Why `isolation` cannot be had on a container with network `network` on this engine.
pub fn isolation_problem(
    offered: &[EngineRuntime],
    isolation: Isolation,
    network: &str,
) -> Option<String> {
    let runtime = isolation.runtime(network)?;
    gvisor_problem(offered, runtime)
}

/// `berth doctor`'s line on gVisor: `usable (…)`, or `not usable: …` with the hint.
pub fn gvisor_summary(offered: &[EngineRuntime]) -> (String, Option<String>) {
    let problems: Vec<String> = gvisor_runtimes()
        .iter()
        .filter_map(|(name, _)| gvisor_problem(offered, name))
        .collect();
    if problems.is_empty() {
        (
            format!(
                "usable (--isolation gvisor: runtimes {GVISOR_RUNTIME} and {GVISOR_NET_RUNTIME})"
            ),
            None,
        )
    } else {
        (
            format!("not usable: {}", problems.join("; ")),
            Some(gvisor_hint()),
        )
    }
}

/// The isolation levels usable on this engine, as runner tags (`isolation:gvisor`): gVisor
/// when both of its runtimes are.
pub fn isolation_tags(offered: &[EngineRuntime]) -> Vec<String> {
    let gvisor = gvisor_runtimes()
        .iter()
        .all(|(name, _)| gvisor_problem(offered, name).is_none());
    if gvisor {
        Isolation::Gvisor.tag().into_iter().collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(name: &str, args: &[&str]) -> EngineRuntime {
        EngineRuntime {
            name: name.into(),
            path: Some("/usr/bin/runsc".into()),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn gvisor_is_usable_only_with_its_runtimes_and_their_arguments() {
        let runc = rt("runc", &[]);
        let good = [
            runc.clone(),
            rt(
                "runsc",
                &["--network=none", "--host-fifo=open", "--host-uds=open"],
            ),
            rt(
                "runsc-net",
                &["--network=host", "-host-fifo=open", "--host-uds=all"],
            ),
        ];
        assert_eq!(gvisor_problem(&good, "runsc"), None);
        assert_eq!(gvisor_problem(&good, "runsc-net"), None);
        assert_eq!(isolation_tags(&good), ["isolation:gvisor"]);
        assert_eq!(isolation_problem(&good, Isolation::Gvisor, "bridge"), None);
        assert_eq!(isolation_problem(&[], Isolation::Runc, "none"), None);

        let e = gvisor_problem(std::slice::from_ref(&runc), "runsc").unwrap();
        assert!(
            e.contains("no `runsc` runtime") && e.contains("offers: runc"),
            "{e}"
        );
        let bare = [runc.clone(), rt("runsc", &["--network=none"])];
        let e = gvisor_problem(&bare, "runsc").unwrap();
        assert!(e.contains("--host-fifo=open and --host-uds=open"), "{e}");
        assert!(isolation_tags(&bare).is_empty());
        let e = isolation_problem(&bare, Isolation::Gvisor, "bridge").unwrap();
        assert!(e.contains("`runsc-net`"), "{e}");
        // A value that is no flag at all, or another flag's, does not count.
        let odd = [rt(
            "runsc",
            &["host-fifo", "--host-uds=none", "--host-fifo=open"],
        )];
        assert!(gvisor_problem(&odd, "runsc")
            .unwrap()
            .contains("--host-uds=open"));
    }

    #[test]
    fn the_hint_is_valid_json_for_daemon_json() {
        let hint = gvisor_hint();
        assert!(hint.contains(RELOAD_COMMAND) && hint.contains("apt-get install runsc"));
        let json: serde_json::Value =
            serde_json::from_str(&format!("{{\n{}\n}}", gvisor_daemon_json())).unwrap();
        assert_eq!(
            json["runtimes"]["runsc-net"]["runtimeArgs"],
            serde_json::json!(["--network=host", "--host-fifo=open", "--host-uds=open"])
        );
        assert_eq!(json["runtimes"]["runsc"]["path"], "/usr/bin/runsc");
    }
}
