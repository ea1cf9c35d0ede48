//! `berth doctor`: one diagnosis, with a hint; exit 0 only when everything is ok.

use std::time::Instant;

use berth_core::ExitStatus;
use berth_engine::diagnose::{check_engine, check_image, DiagnosisReport, ProbeEnv};

use crate::args::DoctorArgs;
use crate::printer::{data_line, print_json, Printer};

pub async fn doctor(args: DoctorArgs, printer: Printer) -> ExitStatus {
    let env = match super::settings_here()
        .and_then(|settings| super::engine_probe_env(&args.engine, &settings, printer))
    {
        Ok(env) => env,
        Err(e) => {
            printer.error(&e.to_string(), e.hint().as_deref());
            return ExitStatus::Error;
        }
    };
    let report = diagnose(&args, &env).await;
    if args.json {
        print_json(&report);
    } else if report.ok {
        print_human(&report, printer);
    } else {
        printer.error(&report.message, report.hint.as_deref());
    }
    if report.ok {
        ExitStatus::Success
    } else {
        ExitStatus::External(1)
    }
}

async fn diagnose(args: &DoctorArgs, env: &ProbeEnv) -> DiagnosisReport {
    let (engine, facts, warning) = match check_engine(env).await {
        Ok(found) => found,
        Err((diagnosis, facts)) => return DiagnosisReport::problem(&diagnosis, facts),
    };
    if let Some(image) = &args.image {
        if let Err(diagnosis) = check_image(&engine, image).await {
            return DiagnosisReport::problem(&diagnosis, Some(facts));
        }
    }
    if let Some(diagnosis) = warning {
        return DiagnosisReport::problem(&diagnosis, Some(facts));
    }
    let mut report = DiagnosisReport {
        ok: true,
        diagnosis: "ok".into(),
        message: format!(
            "Docker Engine {} is usable at {}",
            facts.engine_version, facts.endpoint
        ),
        hint: None,
        engine: Some(facts),
        start_ms: None,
        notes: Vec::new(),
    };
    match &args.image {
        Some(image) => match time_sandbox_start(&engine, image).await {
            Ok(ms) => report.start_ms = Some(ms),
            Err(e) => {
                report.ok = false;
                report.diagnosis = "sandbox_start_failed".into();
                report.message =
                    format!("a sandbox with image `{image}` could not be started: {e}");
                report.hint =
                    Some("run `berth run --image IMAGE -- true` to see the full error".into());
            }
        },
        None => report
            .notes
            .push("sandbox start time not measured: pass --image IMAGE".into()),
    }
    report
}

/// Runs `true` in a real, hardened sandbox (the same path as `berth run`) and times it.
async fn time_sandbox_start(
    engine: &berth_engine::DockerEngine,
    image: &str,
) -> Result<u64, berth_sandbox::SandboxError> {
    use berth_core::plan::{sandbox_user, PlanContext};
    use berth_core::record::{Execution, RunRecord};
    use berth_core::spec::*;
    use std::sync::Arc;

    struct Silent;
    impl berth_sandbox::Reporter for Silent {
        fn event(&self, _: &berth_core::event::EventLine) {}
        fn output(&self, _: berth_core::event::Stream, _: &[u8]) {}
    }
    let scratch = std::env::temp_dir().join(format!("berth-doctor-{}", std::process::id()));
    let result = async {
        std::fs::create_dir_all(&scratch)
            .map_err(|e| berth_sandbox::SandboxError::io(&scratch, e))?;
        let spec = RunSpec {
            image: image.to_string(),
            command: vec!["true".into()],
            pull: PullPolicy::Never,
            workspace: scratch.clone(),
            workspace_mode: WorkspaceMode::None,
            include_dirty: false,
            start_commit: None,
            copy_limit_bytes: berth_core::spec::DEFAULT_COPY_LIMIT,
            mounts: vec![],
            env: vec![],
            secrets: vec![],
            resources: Resources::default(),
            timeout: std::time::Duration::from_secs(60),
            grace: std::time::Duration::from_secs(1),
            network: NetworkMode::None,
            egress: Default::default(),
            isolation: Default::default(),
            read_only: false,
            user: None,
            publish: vec![],
            artifacts: vec![],
            keep: false,
            fallback: Fallback::None,
            workdir: None,
            output_format: "text".into(),
            profile: None,
            persistent: None,
        };
        let state = berth_sandbox::rundir::StateDir::new(scratch.join("state"));
        let id = berth_sandbox::clock::new_run_id();
        let run_dir = state.create_run(&id)?;
        let record = RunRecord::new(
            id.clone(),
            spec,
            Execution::Docker,
            berth_sandbox::clock::now_rfc3339(),
        );
        let mut ctx = berth_sandbox::RunContext::create(
            run_dir,
            record,
            Arc::new(Silent),
            berth_core::mask::Masker::new::<&str>(&[]),
        )?;
        let shim = berth_sandbox::shim::install(&crate::env::cache_dir())?;
        let (u, g) = berth_sandbox::launch::invoking_user();
        let (uid, gid) = sandbox_user(None, u, g);
        let out = ctx.run_dir.create_out_dir(uid, gid)?;
        let plan_context = PlanContext {
            run_id: id,
            invoking_uid: u,
            invoking_gid: g,
            image_entrypoint: vec![],
            image_home: None,
            home_owned: true,
            workspace: scratch.clone(),
            mounts: vec![],
            mount_identities: Vec::new(),
            shim_host_path: shim,
            out_host_path: out,
            io_host_path: engine
                .endpoint()
                .socket_path()
                .and_then(|_| ctx.run_dir.create_io_files(uid, gid).ok()),
            setup_frame: true,
            state_dir_in_workspace: None,
            owner_labels: berth_sandbox::owner::owner_labels(ctx.run_dir.path()),
            remote_engine: !engine.endpoint().is_local(),
            egress_host_path: None,
            egress_engine_path: None,
        };
        let (_tx, mut interrupts) = tokio::sync::mpsc::unbounded_channel();
        let started = Instant::now();
        berth_sandbox::execute_docker(
            engine,
            &mut ctx,
            berth_sandbox::run::DockerRun {
                plan_context,
                secrets: vec![],
                stdin: None,
                workspace: Default::default(),
                held_root: scratch.join("held"),
                pool: None,
                egress: Default::default(),
            },
            &mut interrupts,
        )
        .await;
        let elapsed = started.elapsed().as_millis() as u64;
        match ctx.record.state {
            berth_core::RunState::Error => Err(berth_sandbox::SandboxError::Invalid(
                ctx.record.reason.clone().unwrap_or_default(),
            )),
            _ => Ok(elapsed),
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn print_human(report: &DiagnosisReport, printer: Printer) {
    data_line(&printer.ok(&report.message));
    if let Some(f) = &report.engine {
        data_line(&format!(
            "  engine:          {} (API {}, negotiated {})",
            f.engine_version, f.api_version, f.negotiated_api_version
        ));
        let storage = match f.backing_filesystem.as_str() {
            "" => f.storage_driver.clone(),
            fs => format!("{} on {fs}", f.storage_driver),
        };
        data_line(&format!("  storage driver:  {storage}"));
        data_line(&format!("  --disk:          {}", f.disk_limit));
        data_line(&format!("  cgroup version:  {}", f.cgroup_version));
        data_line(&format!("  runtimes:        {}", f.runtimes.join(", ")));
        data_line(&format!("  gVisor:          {}", f.gvisor));
        if let Some(hint) = &f.gvisor_hint {
            for line in hint.lines() {
                data_line(&format!("    {line}"));
            }
        }
        data_line(&format!("  data root:       {}", f.data_root));
    }
    if let Some(ms) = report.start_ms {
        data_line(&format!(
            "  sandbox start:   {ms} ms (create, start, run `true`, remove)"
        ));
    }
    for note in &report.notes {
        data_line(&format!("  note: {note}"));
    }
}
