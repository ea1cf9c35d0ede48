//! Durations, sizes, CPU and process counts: no panic, accepted values within their caps, and
//! what `format_duration` prints `parse_duration` reads back.
#![no_main]

use std::time::Duration;

use berth_core::units;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = units::parse_duration(&text) {
        assert!(d <= units::MAX_DURATION, "{text:?} -> {d:?}");
        // Printed to the millisecond, read back as that.
        let millis = Duration::from_millis(u64::try_from(d.as_millis()).unwrap());
        assert_eq!(
            units::parse_duration(&units::format_duration(d)),
            Ok(millis)
        );
    }
    if let Ok(m) = units::parse_memory(&text) {
        assert!(
            (units::MIN_MEMORY..=units::MAX_MEMORY).contains(&m),
            "{text:?}"
        );
    }
    if let Ok(s) = units::parse_size(&text) {
        assert!((1..=units::MAX_SIZE).contains(&s), "{text:?}");
    }
    if let Ok(d) = units::parse_disk(&text) {
        assert!((units::MIN_DISK..=units::MAX_DISK).contains(&d), "{text:?}");
    }
    if let Ok(c) = units::parse_cpus(&text) {
        assert!(
            (10_000_000..=units::MAX_CPUS * 1_000_000_000).contains(&c),
            "{text:?}"
        );
    }
    if let Ok(p) = units::parse_pids(&text) {
        assert!((1..=units::MAX_PIDS).contains(&p), "{text:?}");
    }
    if data.len() == 8 {
        let bits = u64::from_le_bytes(data.try_into().unwrap());
        let _ = units::cpus_from_f64(f64::from_bits(bits));
        let _ = units::check_pids(bits as i64);
        let _ = units::format_bytes(bits);
    }
});
