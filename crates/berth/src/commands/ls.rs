use berth_core::ExitStatus;

use crate::args::ListArgs;
use crate::printer::{data_line, print_json, Printer};

pub fn ls(args: ListArgs, _printer: Printer) -> ExitStatus {
    let records = super::state_dir(args.state.state_dir, args.workspace).list();
    if args.json {
        print_json(&records);
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<16}  {:<10}  {:>4}  {:<20}  COMMAND",
        "RUN", "STATE", "EXIT", "CREATED"
    ));
    for r in &records {
        let exit = r
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        let created: String = r.created_at.chars().take(19).collect();
        let mut command = r.spec.command.join(" ");
        if command.len() > 60 {
            command.truncate(57);
            command.push_str("...");
        }
        data_line(&format!(
            "{:<16}  {:<10}  {:>4}  {:<20}  {command}",
            r.id,
            r.state.as_str(),
            exit,
            created
        ));
    }
    ExitStatus::Success
}
