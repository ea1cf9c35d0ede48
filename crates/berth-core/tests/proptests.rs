//! Property tests: no user input makes a parser panic, accepted values stay within their
//! documented caps, and what berth prints it reads back.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_core::spec::{parse_env, MountRequest, NetworkMode, PortPublish, UserSpec};
use berth_core::{config, profile, units, workflow};
use proptest::prelude::*;

/// Strings that look like the values users write, with the corners that broke parsers before:
/// exponents, signs, `inf`/`NaN`, long runs of digits, several units in a row.
fn numberish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,30}(\\.[0-9]{0,12})?(ms|s|m|h|k|g|b|kb|mb|gb|K|M|G)?",
        "([0-9]{1,15}(ms|s|m|h)){1,6}",
        "[-+]?[0-9]{0,25}([eE][-+]?[0-9]{1,4})?[a-z]{0,3}",
        "(inf|infinity|NaN|nan|-inf|-0|0x10|1_000| 5s |５s)",
        "[0-9.eE+\\- a-zµ]{0,40}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn unit_parsers_never_panic_and_respect_their_caps(s in numberish()) {
        if let Ok(d) = units::parse_duration(&s) {
            prop_assert!(d <= units::MAX_DURATION, "{s} -> {d:?}");
        }
        if let Ok(m) = units::parse_memory(&s) {
            prop_assert!((units::MIN_MEMORY..=units::MAX_MEMORY).contains(&m), "{s} -> {m}");
        }
        if let Ok(b) = units::parse_size(&s) {
            prop_assert!((1..=units::MAX_SIZE).contains(&b), "{s} -> {b}");
        }
        if let Ok(d) = units::parse_disk(&s) {
            prop_assert!((units::MIN_DISK..=units::MAX_DISK).contains(&d), "{s} -> {d}");
        }
        if let Ok(c) = units::parse_cpus(&s) {
            prop_assert!((10_000_000..=units::MAX_CPUS * 1_000_000_000).contains(&c), "{s} -> {c}");
        }
        if let Ok(p) = units::parse_pids(&s) {
            prop_assert!((1..=units::MAX_PIDS).contains(&p), "{s} -> {p}");
        }
    }

    #[test]
    fn errors_name_the_value(s in "[a-z0-9.\\-]{1,30}") {
        for e in [
            units::parse_duration(&s).err(),
            units::parse_memory(&s).err(),
            units::parse_size(&s).err(),
            units::parse_disk(&s).err(),
            units::parse_cpus(&s).err(),
            units::parse_pids(&s).err(),
        ]
        .into_iter()
        .flatten()
        {
            let text = e.to_string();
            prop_assert!(text.contains(&format!("`{s}`")), "{text}");
            prop_assert!(text.contains("expected") || text.contains("must be"), "{text}");
        }
    }

    #[test]
    fn numeric_values_never_panic(f in any::<f64>(), i in any::<i64>()) {
        if let Ok(c) = units::cpus_from_f64(f) {
            prop_assert!((10_000_000..=units::MAX_CPUS * 1_000_000_000).contains(&c));
        }
        prop_assert_eq!(units::check_pids(i).is_ok(), (1..=units::MAX_PIDS).contains(&i));
        let _ = units::format_bytes(i.unsigned_abs());
        let _ = units::format_duration(Duration::from_nanos(i.unsigned_abs()));
    }

    #[test]
    fn durations_round_trip(ms in 0..=units::MAX_DURATION.as_millis() as u64) {
        let d = Duration::from_millis(ms);
        let text = units::format_duration(d);
        prop_assert_eq!(units::parse_duration(&text), Ok(d), "{}", text);
    }

    #[test]
    fn parsed_durations_print_back(ms in 0..=units::MAX_DURATION.as_millis() as u64) {
        // Through the bare-seconds form too: `12.345` is 12 s 345 ms.
        let text = format!("{}.{:03}", ms / 1000, ms % 1000);
        prop_assert_eq!(units::parse_duration(&text), Ok(Duration::from_millis(ms)));
    }

    #[test]
    fn whole_numbers_round_trip(
        bytes in units::MIN_MEMORY..=units::MAX_MEMORY,
        pids in 1..=units::MAX_PIDS,
    ) {
        prop_assert_eq!(units::parse_memory(&bytes.to_string()), Ok(bytes));
        prop_assert_eq!(units::parse_size(&format!("{bytes}b")), Ok(bytes));
        prop_assert_eq!(units::parse_pids(&pids.to_string()), Ok(pids));
    }

    #[test]
    fn spec_parsers_never_panic(s in any::<String>(), t in "[a-z0-9:./=_\\-]{0,30}") {
        for s in [&s, &t] {
            let _ = MountRequest::parse(s);
            let _ = UserSpec::parse(s);
            let _ = PortPublish::parse(s);
            let _ = NetworkMode::parse(s);
            let _ = parse_env(s);
            let _ = s.parse::<berth_core::spec::WorkspaceMode>();
            let _ = s.parse::<berth_core::spec::PullPolicy>();
            let _ = s.parse::<berth_core::spec::Fallback>();
        }
    }

    #[test]
    fn config_files_never_panic(text in any::<String>()) {
        let _ = config::parse("berth.toml", &text);
    }

    #[test]
    fn config_values_never_panic(
        key in prop::sample::select(vec![
            "timeout", "grace", "memory", "copy_limit", "cpus", "pids", "user", "network",
            "pull", "fallback", "workspace_mode",
        ]),
        value in numberish(),
        number in any::<i64>(),
        float in any::<f64>(),
    ) {
        for text in [
            format!("{key} = {}", toml_string(&value)),
            format!("{key} = {number}"),
            format!("{key} = {float:?}"),
            format!("[pool.x]\nsize = 1\nidle_ttl = {}", toml_string(&value)),
            format!("[profiles.x]\ncommand = [\"a\"]\nprompt = \"none\"\nidle_ttl = {}", toml_string(&value)),
        ] {
            if let Ok(c) = config::parse("berth.toml", &text) {
                // Whatever was accepted is usable without a panic.
                let _ = c.nano_cpus();
                for (name, pool) in &c.pool {
                    let _ = pool.to_spec(name);
                }
                let _ = profile::resolve_all(Vec::new(), &[("berth.toml".into(), c.profiles)]);
            } else {
                let e = config::parse("berth.toml", &text).unwrap_err().to_string();
                prop_assert!(e.starts_with("berth.toml:"), "{e}");
            }
        }
    }

    #[test]
    fn workflow_files_never_panic(text in any::<String>()) {
        let _ = workflow::parse("w.toml", &text);
    }

    #[test]
    fn workflow_values_never_panic(
        at in 0..workflow::BUILDER_REVIEWER.len(),
        insert in numberish(),
        timeout in numberish(),
        iterations in any::<i64>(),
    ) {
        // The built-in file with its loop's settings replaced by arbitrary ones.
        let text = workflow::BUILDER_REVIEWER
            .replace("max_iterations = 3", &format!("max_iterations = {iterations}"))
            .replace(
                "continue_on_failure = true\n\n[loop]",
                &format!("timeout = {}\n\n[loop]", toml_string(&timeout)),
            );
        if let Ok(w) = workflow::parse("w.toml", &text) {
            prop_assert!(workflow::MAX_ITERATIONS.contains(&i64::from(w.max_iterations)));
            for step in w.baseline.iter().chain(&w.steps) {
                if let Some(secs) = step.timeout_secs {
                    prop_assert!((1..=units::MAX_DURATION.as_secs()).contains(&secs));
                }
            }
        }
        // And with arbitrary text spliced in anywhere.
        let mut cut = at;
        while !text.is_char_boundary(cut.min(text.len())) {
            cut -= 1;
        }
        let cut = cut.min(text.len());
        let spliced = format!("{}{insert}{}", &text[..cut], &text[cut..]);
        let _ = workflow::parse("w.toml", &spliced);
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[test]
fn a_step_timeout_out_of_range_names_its_key() {
    let text = workflow::BUILDER_REVIEWER.replace(
        "continue_on_failure = true\n\n[loop]",
        "timeout = \"1e20\"\n\n[loop]",
    );
    let e = workflow::parse("w.toml", &text).unwrap_err().to_string();
    assert!(
        e.contains("w.toml") && e.contains("baseline[0].timeout") && e.contains("`1e20`"),
        "{e}"
    );
    let text = workflow::BUILDER_REVIEWER.replace(
        "continue_on_failure = true\n\n[loop]",
        "timeout = \"99999999999999h\"\n\n[loop]",
    );
    let e = workflow::parse("w.toml", &text).unwrap_err().to_string();
    assert!(e.contains("timeout") && e.contains("365 days"), "{e}");
}
