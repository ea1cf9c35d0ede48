//! Parsing of the human units berth accepts on the command line, in config and workflow files
//! and in API bodies. Every number is read as an exact decimal with checked arithmetic (no
//! floating point, no saturating casts), and every kind of value has a documented cap:
//!
//! | value     | form                                   | accepted                         |
//! |-----------|----------------------------------------|----------------------------------|
//! | duration  | `90s`, `10m`, `1h30m`, `250ms`, `2`    | 0 to [`MAX_DURATION`] (365 days) |
//! | memory    | `512m`, `2g`, `1.5g`, `10485760`       | 6m to [`MAX_MEMORY`] (1 TiB)     |
//! | size      | `64k`, `500m`, `4g`                    | 1 byte to [`MAX_SIZE`] (1 TiB)   |
//! | disk      | `500m`, `10g`                          | 1m to [`MAX_DISK`] (64 TiB)      |
//! | CPUs      | `0.5`, `2`                             | 0.01 to [`MAX_CPUS`] (1024)      |
//! | processes | `512`                                  | 1 to [`MAX_PIDS`] (4194304)      |
//!
//! Numbers are `DIGITS[.DIGITS]`: no sign, no exponent (`1e20`), no `inf` or `NaN`.

use std::time::Duration;

/// A value given by the user could not be understood, or is out of range.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} `{input}`: {expected}")]
pub struct UnitError {
    pub what: &'static str,
    /// The value as given (cut to [`SHOWN_INPUT_CHARS`] characters).
    pub input: String,
    /// What is accepted instead.
    pub expected: &'static str,
}

/// How much of a rejected value an error message repeats.
pub const SHOWN_INPUT_CHARS: usize = 64;

impl UnitError {
    fn new(what: &'static str, input: &str, expected: &'static str) -> Self {
        let input = match input.char_indices().nth(SHOWN_INPUT_CHARS) {
            Some((cut, _)) => format!("{}…", &input[..cut]),
            None => input.to_string(),
        };
        Self {
            what,
            input,
            expected,
        }
    }
}

/// The longest duration accepted anywhere (timeouts, grace periods, TTLs, leases): 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The smallest memory limit: the engine refuses limits below 6 MiB.
pub const MIN_MEMORY: u64 = 6 << 20;
/// The largest memory limit: 1 TiB.
pub const MAX_MEMORY: u64 = 1 << 40;
/// The largest size (e.g. copy mode's upload limit): 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;
/// The smallest disk limit (`--disk`): 1 MiB.
pub const MIN_DISK: u64 = 1 << 20;
/// The largest disk limit (`--disk`): 64 TiB.
pub const MAX_DISK: u64 = 64 << 40;
/// The most CPUs a sandbox may be given.
pub const MAX_CPUS: i64 = 1024;
/// The fewest CPUs (0.01), in nano-CPUs.
const MIN_NANO_CPUS: u128 = 10_000_000;
/// The most processes: the kernel's own ceiling for PIDs (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_PIDS: i64 = 4_194_304;

const MEMORY_EXPECTED: &str =
    "expected a number with an optional unit b, k, m or g, from 6m to 1024g (e.g. 512m, 2g)";
const MEMORY_RANGE: &str = "a memory limit must be from 6m to 1024g (1 TiB)";
const SIZE_EXPECTED: &str =
    "expected a number with an optional unit b, k, m or g, at most 1024g (e.g. 500m, 4g)";
const SIZE_RANGE: &str = "a size must be from 1 byte to 1024g (1 TiB)";
const DISK_EXPECTED: &str =
    "expected a number with an optional unit b, k, m or g, from 1m to 65536g (e.g. 500m, 10g)";
const DISK_RANGE: &str = "a disk limit must be from 1m to 65536g (64 TiB)";
const DURATION_EXPECTED: &str = "expected a number with a unit ms, s, m or h, at most 8760h (e.g. 90s, 10m, 1h30m); a bare number means seconds";
const DURATION_RANGE: &str = "a duration must be at most 8760h (365 days)";
const CPUS_EXPECTED: &str = "expected a number of CPUs from 0.01 to 1024 (e.g. 0.5, 2)";
const PIDS_EXPECTED: &str = "expected a whole number of processes from 1 to 4194304 (e.g. 512)";

const BILLION: u128 = 1_000_000_000;

/// Why a decimal number could not be read.
enum Bad {
    /// Not `DIGITS[.DIGITS]`.
    Form,
    /// Far too large for any limit.
    Large,
}

/// Reads `DIGITS[.DIGITS]` (or `.DIGITS`) exactly, in billionths; digits past the ninth decimal
/// are dropped.
fn billionths(s: &str) -> Result<u128, Bad> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(Bad::Form);
    }
    let mut whole: u128 = 0;
    for b in int.bytes() {
        whole = whole
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(b - b'0')))
            .ok_or(Bad::Large)?;
    }
    let mut value = whole.checked_mul(BILLION).ok_or(Bad::Large)?;
    let mut scale = BILLION / 10;
    for b in frac.bytes().take(9) {
        value = value
            .checked_add(u128::from(b - b'0') * scale)
            .ok_or(Bad::Large)?;
        scale /= 10;
    }
    Ok(value)
}

/// Parses a memory size such as `512m` or `2g` (binary units, like `docker run --memory`),
/// from 6m to 1 TiB.
pub fn parse_memory(input: &str) -> Result<u64, UnitError> {
    let messages = (MEMORY_EXPECTED, MEMORY_RANGE);
    parse_bytes(input, "memory size", messages, MIN_MEMORY, MAX_MEMORY)
}

/// Parses a size such as `64k`, `500m` or `4g` (binary units), from 1 byte to 1 TiB.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    parse_bytes(input, "size", (SIZE_EXPECTED, SIZE_RANGE), 1, MAX_SIZE)
}

/// Parses a disk limit such as `500m` or `10g` (binary units), from 1m to 64 TiB.
pub fn parse_disk(input: &str) -> Result<u64, UnitError> {
    let messages = (DISK_EXPECTED, DISK_RANGE);
    parse_bytes(input, "disk size", messages, MIN_DISK, MAX_DISK)
}

fn parse_bytes(
    input: &str,
    what: &'static str,
    (expected, range): (&'static str, &'static str),
    min: u64,
    max: u64,
) -> Result<u64, UnitError> {
    let form = || UnitError::new(what, input, expected);
    let out_of_range = || UnitError::new(what, input, range);
    let s = input.trim().to_ascii_lowercase();
    // `512mb` means `512m`; a lone `b` suffix means bytes.
    let s = match s.strip_suffix('b') {
        Some(rest) if rest.ends_with(['k', 'm', 'g']) => rest,
        _ => s.as_str(),
    };
    let (digits, factor): (&str, u128) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('b') => (&s[..s.len() - 1], 1),
        Some(c) if c.is_ascii_digit() => (s, 1),
        _ => return Err(form()),
    };
    let value = billionths(digits).map_err(|bad| match bad {
        Bad::Form => form(),
        Bad::Large => out_of_range(),
    })?;
    // Rounded to the nearest byte.
    let bytes = value
        .checked_mul(factor)
        .and_then(|v| v.checked_add(BILLION / 2))
        .map(|v| v / BILLION)
        .ok_or_else(out_of_range)?;
    match u64::try_from(bytes) {
        Ok(b) if (min..=max).contains(&b) => Ok(b),
        _ => Err(out_of_range()),
    }
}

/// Parses a duration such as `90s`, `10m`, `1h30m` or `250ms`; a bare number is seconds. At
/// most [`MAX_DURATION`].
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let form = || UnitError::new("duration", input, DURATION_EXPECTED);
    let too_long = || UnitError::new("duration", input, DURATION_RANGE);
    let large = |bad: Bad| match bad {
        Bad::Form => form(),
        Bad::Large => too_long(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(form());
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let max = MAX_DURATION.as_nanos();
    let nanos = if s.chars().all(is_number) {
        // Billionths of a second are nanoseconds.
        billionths(s).map_err(large)?
    } else {
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !is_number(c)).ok_or_else(form)?;
            if number_len == 0 {
                return Err(form());
            }
            let value = billionths(&rest[..number_len]).map_err(large)?;
            rest = &rest[number_len..];
            let unit_len = rest.find(is_number).unwrap_or(rest.len());
            let nanos_per_unit: u128 = match &rest[..unit_len] {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(form()),
            };
            rest = &rest[unit_len..];
            total = value
                .checked_mul(nanos_per_unit)
                .map(|v| v / BILLION)
                .and_then(|v| total.checked_add(v))
                .filter(|t| *t <= max)
                .ok_or_else(too_long)?;
        }
        total
    };
    if nanos > max {
        return Err(too_long());
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses a CPU count such as `0.5` or `2` (0.01 to [`MAX_CPUS`]) into the engine's nano-CPUs.
pub fn parse_cpus(input: &str) -> Result<i64, UnitError> {
    let err = || UnitError::new("CPU count", input, CPUS_EXPECTED);
    let nano = billionths(input.trim()).map_err(|_| err())?;
    let max = MAX_CPUS as u128 * BILLION;
    if !(MIN_NANO_CPUS..=max).contains(&nano) {
        return Err(err());
    }
    i64::try_from(nano).map_err(|_| err())
}

/// Parses a CPU count given as a number (a config file's `cpus = 1.5`, an API body's
/// `"cpus": 1.5`); `NaN`, infinities and negative numbers are refused like any other bad value.
pub fn cpus_from_f64(value: f64) -> Result<i64, UnitError> {
    // `Display` of an f64 never uses an exponent, so the decimal reader sees every finite value.
    parse_cpus(&value.to_string())
}

/// Parses a process limit such as `512` (1 to [`MAX_PIDS`]).
pub fn parse_pids(input: &str) -> Result<i64, UnitError> {
    let err = || UnitError::new("process count", input, PIDS_EXPECTED);
    let s = input.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    // More digits than the largest accepted value has is out of range, whatever they say.
    let digits = s.trim_start_matches('0');
    if digits.len() > 7 {
        return Err(err());
    }
    let pids = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().map_err(|_| err())?
    };
    check_pids(pids).map_err(|_| err())
}

/// Checks a process limit given as a number (config files, API bodies, profiles).
pub fn check_pids(pids: i64) -> Result<i64, UnitError> {
    if (1..=MAX_PIDS).contains(&pids) {
        Ok(pids)
    } else {
        Err(UnitError::new(
            "process count",
            &pids.to_string(),
            PIDS_EXPECTED,
        ))
    }
}

/// Formats a byte count with a binary unit, for messages.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(input: &str) -> Option<u64> {
        parse_memory(input).ok()
    }

    /// The error for `input`, which must name the value and say what is accepted.
    fn rejects<T: std::fmt::Debug>(
        parse: fn(&str) -> Result<T, UnitError>,
        input: &str,
        accepted: &str,
    ) {
        let e = parse(input).expect_err(input).to_string();
        assert!(
            e.contains(&format!("`{}`", input)) && e.contains(accepted),
            "{input}: {e}"
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(mem("2g"), Some(2 << 30));
        assert_eq!(mem("2G"), Some(2 << 30));
        assert_eq!(mem("512m"), Some(512 << 20));
        assert_eq!(mem("512mb"), Some(512 << 20));
        assert_eq!(mem("1.5g"), Some(3 << 29));
        assert_eq!(mem("10485760"), Some(10 << 20));
        assert_eq!(mem("1024g"), Some(MAX_MEMORY));
        assert_eq!(mem("64k"), None, "below the engine's minimum");
        assert_eq!(mem("two"), None);
        assert_eq!(mem("-1g"), None);
        assert_eq!(mem(""), None);
        assert_eq!(mem("5x"), None);
    }

    #[test]
    fn sizes_have_no_minimum() {
        let size = |input| parse_size(input).ok();
        assert_eq!(size("64k"), Some(64 << 10));
        assert_eq!(size("1"), Some(1));
        assert_eq!(size("4g"), Some(4 << 30));
        assert_eq!(size("0"), None);
        assert_eq!(size("0.1b"), None, "rounds to nothing");
        assert!(parse_size("lots")
            .unwrap_err()
            .to_string()
            .starts_with("invalid size `lots`"));
    }

    #[test]
    fn disk_sizes() {
        let disk = |input| parse_disk(input).ok();
        assert_eq!(disk("10g"), Some(10 << 30));
        assert_eq!(disk("1m"), Some(MIN_DISK));
        assert_eq!(disk("65536g"), Some(MAX_DISK));
        assert_eq!(disk("1.5g"), Some(3 << 29));
        rejects(parse_disk, "65537g", "64 TiB");
        rejects(parse_disk, "99999999999g", "64 TiB");
        rejects(parse_disk, "64k", "from 1m");
        rejects(parse_disk, "0", "from 1m");
        rejects(parse_disk, "lots", "10g");
        rejects(parse_disk, "1e20", "10g");
        rejects(parse_disk, "-1g", "10g");
    }

    #[test]
    fn memory_error_names_value_and_form() {
        let e = parse_memory("lots").unwrap_err().to_string();
        assert!(e.contains("`lots`") && e.contains("2g"), "{e}");
    }

    #[test]
    fn sizes_out_of_range() {
        rejects(parse_memory, "99999999999g", "1 TiB");
        rejects(parse_memory, "1025g", "1 TiB");
        rejects(parse_memory, "18446744073709551616", "1 TiB");
        rejects(parse_memory, &"9".repeat(60), "1 TiB");
        rejects(parse_memory, "1m", "from 6m");
        rejects(parse_size, "99999999999g", "1 TiB");
        rejects(parse_size, "1e20", "at most 1024g");
        rejects(parse_memory, "1e3g", "from 6m to 1024g");
        rejects(parse_memory, "NaN", "512m, 2g");
        rejects(parse_memory, "inf", "512m, 2g");
        rejects(parse_memory, "infinity", "512m, 2g");
        rejects(parse_memory, "-2g", "512m, 2g");
        rejects(parse_memory, " ", "512m, 2g");
        rejects(parse_memory, ".g", "512m, 2g");
        rejects(parse_memory, "1.2.3g", "512m, 2g");
    }

    fn dur(input: &str) -> Option<Duration> {
        parse_duration(input).ok()
    }

    #[test]
    fn durations() {
        assert_eq!(dur("10m"), Some(Duration::from_secs(600)));
        assert_eq!(dur("90s"), Some(Duration::from_secs(90)));
        assert_eq!(dur("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(dur("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(dur("2"), Some(Duration::from_secs(2)));
        assert_eq!(dur("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(dur("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(dur("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(dur("0"), Some(Duration::ZERO));
        assert_eq!(dur("8760h"), Some(MAX_DURATION));
        assert_eq!(dur("525600m"), Some(MAX_DURATION));
        assert_eq!(dur("10 minutes"), None);
        assert_eq!(dur("m"), None);
        assert_eq!(dur("-3s"), None);
        assert_eq!(dur(""), None);
    }

    #[test]
    fn durations_out_of_range() {
        rejects(parse_duration, "1e20", "at most 8760h");
        rejects(parse_duration, "1e19", "at most 8760h");
        rejects(parse_duration, "99999999999999h", "365 days");
        rejects(parse_duration, "8761h", "365 days");
        rejects(parse_duration, "8760h1s", "365 days");
        rejects(parse_duration, "31536001", "365 days");
        rejects(parse_duration, "100000000000000000000", "365 days");
        rejects(parse_duration, &"9".repeat(50), "365 days");
        rejects(parse_duration, &format!("{}h", "9".repeat(50)), "365 days");
        rejects(parse_duration, &"8000h".repeat(2), "365 days");
        rejects(parse_duration, "-1", "at most 8760h");
        rejects(parse_duration, "NaN", "at most 8760h");
        rejects(parse_duration, "inf", "at most 8760h");
        rejects(parse_duration, "infinity", "at most 8760h");
        rejects(parse_duration, "1h30", "at most 8760h");
        rejects(parse_duration, "1.2.3s", "at most 8760h");
        rejects(parse_duration, ".s", "at most 8760h");
        rejects(parse_duration, "  ", "at most 8760h");
    }

    #[test]
    fn durations_round_trip() {
        for s in ["10m", "90s", "1h", "250ms", "0s", "8760h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("2").ok(), Some(2_000_000_000));
        assert_eq!(parse_cpus("0.5").ok(), Some(500_000_000));
        assert_eq!(parse_cpus("1024").ok(), Some(1_024_000_000_000));
        assert_eq!(parse_cpus("0.01").ok(), Some(10_000_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("many").is_err());
        rejects(parse_cpus, "1025", "0.01 to 1024");
        rejects(parse_cpus, "0.001", "0.01 to 1024");
        rejects(parse_cpus, "1e20", "0.01 to 1024");
        rejects(parse_cpus, "-1", "0.01 to 1024");
        rejects(parse_cpus, "NaN", "0.01 to 1024");
        rejects(parse_cpus, "inf", "0.01 to 1024");
        rejects(parse_cpus, "", "0.01 to 1024");
        assert_eq!(cpus_from_f64(1.5).ok(), Some(1_500_000_000));
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            1e300,
            1e-300,
            0.0,
        ] {
            assert!(cpus_from_f64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("512").ok(), Some(512));
        assert_eq!(parse_pids("0512").ok(), Some(512));
        assert_eq!(parse_pids("4194304").ok(), Some(MAX_PIDS));
        rejects(parse_pids, "99999999999999999999", "1 to 4194304");
        rejects(parse_pids, "4194305", "1 to 4194304");
        rejects(parse_pids, "0", "1 to 4194304");
        rejects(parse_pids, "-1", "1 to 4194304");
        rejects(parse_pids, "1.5", "1 to 4194304");
        rejects(parse_pids, "", "1 to 4194304");
        rejects(parse_pids, "NaN", "1 to 4194304");
        assert!(check_pids(0).is_err() && check_pids(-5).is_err());
        let e = check_pids(i64::MAX).unwrap_err().to_string();
        assert!(
            e.contains(&i64::MAX.to_string()) && e.contains("4194304"),
            "{e}"
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let e = parse_duration(&"x".repeat(10_000)).unwrap_err();
        assert_eq!(e.input.chars().count(), SHOWN_INPUT_CHARS + 1);
        assert!(parse_duration("é".repeat(100).as_str()).is_err());
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(2 << 30), "2 GiB");
        assert_eq!(format_bytes(1536 << 10), "1.5 MiB");
    }
}
