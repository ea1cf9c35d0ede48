//! `POST /api/v1/runs` and `/api/v1/workflows` bodies: strict parsing, then validation, as the
//! server does it. Neither may panic; every problem must carry a JSON path or be "malformed".
#![no_main]

use berth_api::{
    parse_strict, validate_submission, ParseFailure, ProjectScope, SubmitRun, SubmitWorkflow,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let scope = ProjectScope {
        workspace_root: "/srv/demo".into(),
        allowed_paths: vec!["/data".into()],
    };
    match parse_strict::<SubmitRun>(body) {
        Ok(run) => {
            for error in validate_submission(&run, &scope) {
                assert!(!error.message.is_empty(), "{error:?}");
            }
        }
        Err(ParseFailure::Invalid(errors)) => assert!(!errors.is_empty()),
        Err(ParseFailure::Malformed(_)) => {}
    }
    let _ = parse_strict::<SubmitWorkflow>(body);
});
