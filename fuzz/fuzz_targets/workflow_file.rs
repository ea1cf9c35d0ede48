//! Workflow files: parsing with all the checks (steps, references, templates, verdict rules,
//! timeouts).
#![no_main]

use berth_core::{units, workflow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(w) = workflow::parse("w.toml", text) {
        assert!(workflow::MAX_ITERATIONS.contains(&i64::from(w.max_iterations)));
        for step in w.baseline.iter().chain(&w.steps) {
            if let Some(secs) = step.timeout_secs {
                assert!((1..=units::MAX_DURATION.as_secs()).contains(&secs));
            }
        }
    }
});
