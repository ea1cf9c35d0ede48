//! `berth ps` and `berth rm`: the held containers (persistent ones and the warm pool).

use berth_core::held::HeldKind;
use berth_core::units::format_duration;
use berth_core::ExitStatus;
use berth_engine::DockerEngine;
use berth_sandbox::held::{self, now_epoch, Listed};

use crate::args::{PsArgs, RmArgs};
use crate::printer::{data_line, print_json, Printer};

/// One held container as `berth ps` shows it.
#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    kind: &'static str,
    agent: Option<String>,
    /// `busy` (a run is inside), `idle`, or the engine's state when not running.
    state: String,
    current_run: Option<String>,
    age_secs: i64,
    idle_secs: i64,
    uses: u64,
    idle_ttl_secs: u64,
}

fn row(l: &Listed, now: i64) -> Row {
    let info = l.dir.read_info();
    let busy = !matches!(l.dir.try_lock(), Ok(Some(_)));
    let state = if l.container.state != "running" {
        l.container.state.clone()
    } else if busy {
        "busy".into()
    } else {
        "idle".into()
    };
    Row {
        name: l.container.name.clone(),
        kind: l.kind.as_str(),
        agent: l.agent().map(str::to_string),
        state,
        current_run: info.current_run.map(|(id, _)| id),
        age_secs: now.saturating_sub(l.container.created),
        idle_secs: now.saturating_sub(info.last_used.max(l.container.created)),
        uses: info.uses,
        idle_ttl_secs: info.idle_ttl,
    }
}

async fn connect(printer: Printer) -> Option<DockerEngine> {
    match berth_engine::diagnose::check_engine(&super::probe_env()).await {
        Ok((engine, _, _)) => Some(engine),
        Err((diagnosis, _)) => {
            super::print_diagnosis(printer, &diagnosis);
            None
        }
    }
}

async fn list(engine: &DockerEngine, printer: Printer) -> Option<Vec<Listed>> {
    match held::list(engine).await {
        Ok(list) => Some(list.into_iter().filter(Listed::on_this_host).collect()),
        Err(e) => {
            printer.error(
                &format!("listing berth's containers failed: {e}"),
                e.hint().as_deref(),
            );
            None
        }
    }
}

pub async fn ps(args: PsArgs, printer: Printer) -> ExitStatus {
    let Some(engine) = connect(printer).await else {
        return ExitStatus::Error;
    };
    let Some(listed) = list(&engine, printer).await else {
        return ExitStatus::Error;
    };
    let now = now_epoch();
    let mut rows: Vec<Row> = listed.iter().map(|l| row(l, now)).collect();
    rows.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    if args.json {
        print_json(&rows);
        return ExitStatus::Success;
    }
    if rows.is_empty() {
        printer.info("no persistent or pool containers");
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<36} {:<10} {:<6} {:>9} {:>9} {:>5}  RUN",
        "NAME", "KIND", "STATE", "AGE", "LAST USE", "USES"
    ));
    let ago = |secs: i64| format_duration(std::time::Duration::from_secs(secs.max(0) as u64));
    for r in rows {
        data_line(&format!(
            "{:<36} {:<10} {:<6} {:>9} {:>9} {:>5}  {}",
            r.name,
            r.kind,
            r.state,
            ago(r.age_secs),
            ago(r.idle_secs),
            r.uses,
            r.current_run.as_deref().unwrap_or("-")
        ));
    }
    ExitStatus::Success
}

#[derive(Debug, serde::Serialize)]
struct Removed {
    name: String,
    removed: bool,
    detail: String,
}

pub async fn rm(args: RmArgs, printer: Printer) -> ExitStatus {
    if args.names.is_empty() && !args.all && !args.pool {
        printer.error(
            "nothing to remove: name a persistent container, or pass --all or --pool",
            Some("`berth ps` lists them"),
        );
        return ExitStatus::Error;
    }
    let Some(engine) = connect(printer).await else {
        return ExitStatus::Error;
    };
    let Some(listed) = list(&engine, printer).await else {
        return ExitStatus::Error;
    };
    let matches = |l: &Listed, wanted: &str| {
        let short = l
            .container
            .name
            .split_once("--")
            .map(|(_, n)| n)
            .unwrap_or("");
        let qualified = format!("{}/{short}", l.agent().unwrap_or(""));
        l.container.name == wanted || short == wanted || qualified == wanted
    };
    let mut chosen: Vec<&Listed> = Vec::new();
    let mut status = ExitStatus::Success;
    for wanted in &args.names {
        let found: Vec<&Listed> = listed
            .iter()
            .filter(|l| l.kind == HeldKind::Persistent && matches(l, wanted))
            .collect();
        if found.is_empty() {
            printer.error(
                &format!("no persistent container `{wanted}`"),
                Some("`berth ps` lists them"),
            );
            status = ExitStatus::Error;
        }
        chosen.extend(found);
    }
    chosen.extend(listed.iter().filter(|l| {
        (args.all && l.kind == HeldKind::Persistent) || (args.pool && l.kind == HeldKind::Pool)
    }));
    chosen.sort_by_key(|l| &l.container.name);
    chosen.dedup_by_key(|l| &l.container.name);

    let mut results = Vec::new();
    for l in chosen {
        let lock = l.dir.try_lock().ok().flatten();
        let result = if lock.is_none() && !args.force {
            Removed {
                name: l.container.name.clone(),
                removed: false,
                detail: "a run is inside it; wait for it, or pass --force".into(),
            }
        } else {
            match held::remove(&engine, l).await {
                Ok(()) => Removed {
                    name: l.container.name.clone(),
                    removed: true,
                    detail: String::new(),
                },
                Err(e) => Removed {
                    name: l.container.name.clone(),
                    removed: false,
                    detail: e.to_string(),
                },
            }
        };
        if !result.removed {
            status = ExitStatus::Error;
        }
        results.push(result);
    }
    if args.json {
        print_json(&results);
    } else {
        for r in &results {
            if r.removed {
                data_line(&format!("removed {}", r.name));
            } else {
                printer.error(&format!("{} was not removed: {}", r.name, r.detail), None);
            }
        }
        if results.is_empty() && status == ExitStatus::Success {
            printer.info("nothing to remove");
        }
    }
    status
}
