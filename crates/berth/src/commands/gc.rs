use berth_core::ExitStatus;
use berth_sandbox::gc::collect_garbage;

use crate::args::GcArgs;
use crate::printer::{data_line, print_json, Printer};

pub async fn gc(args: GcArgs, printer: Printer) -> ExitStatus {
    let engine = match berth_engine::diagnose::check_engine(&super::probe_env()).await {
        Ok((engine, _, _)) => engine,
        Err((diagnosis, _)) => {
            super::print_diagnosis(printer, &diagnosis);
            return ExitStatus::Error;
        }
    };
    let actions = match collect_garbage(&engine).await {
        Ok(actions) => actions,
        Err(e) => {
            printer.error(
                &format!("listing berth's containers failed: {e}"),
                e.hint().as_deref(),
            );
            return ExitStatus::Error;
        }
    };
    if args.json {
        print_json(&actions);
    } else if actions.is_empty() {
        printer.info("no berth containers found");
    } else {
        for a in &actions {
            data_line(&format!("{:<8} {}  {}", a.action, a.container, a.detail));
        }
    }
    if actions.iter().any(|a| a.action == "failed") {
        ExitStatus::Error
    } else {
        ExitStatus::Success
    }
}
