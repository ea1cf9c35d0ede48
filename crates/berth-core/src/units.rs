//! Parsing of the human units berth accepts on the command line and in config files.

use std::time::Duration;

/// A value given by the user could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} `{input}`: {expected}")]
pub struct UnitError {
    pub what: &'static str,
    pub input: String,
    pub expected: &'static str,
}

const MEMORY_EXPECTED: &str =
    "expected a number with an optional unit b, k, m or g (e.g. 512m, 2g)";
const DURATION_EXPECTED: &str =
    "expected a number with a unit ms, s, m or h (e.g. 90s, 10m, 1h30m); a bare number means seconds";
const CPUS_EXPECTED: &str = "expected a positive number of CPUs (e.g. 0.5, 2)";

/// Parses a memory size such as `512m` or `2g` (binary units, like `docker run --memory`).
pub fn parse_memory(input: &str) -> Result<u64, UnitError> {
    let bytes = parse_bytes(input, "memory size")?;
    if bytes < 6 * 1024 * 1024 {
        // Docker refuses limits below 6 MiB; saying so here names the flag instead of the engine.
        return Err(UnitError {
            what: "memory size",
            input: input.to_string(),
            expected: "the smallest memory limit the engine accepts is 6m",
        });
    }
    Ok(bytes)
}

/// Parses a size such as `64k`, `500m` or `4g` (binary units), with no minimum.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    parse_bytes(input, "size")
}

fn parse_bytes(input: &str, what: &'static str) -> Result<u64, UnitError> {
    let err = || UnitError {
        what,
        input: input.to_string(),
        expected: MEMORY_EXPECTED,
    };
    let s = input.trim().to_ascii_lowercase();
    // `512mb` means `512m`; a lone `b` suffix means bytes.
    let s = match s.strip_suffix('b') {
        Some(rest) if rest.ends_with(['k', 'm', 'g']) => rest,
        _ => s.as_str(),
    };
    let (digits, factor) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('b') => (&s[..s.len() - 1], 1),
        Some(c) if c.is_ascii_digit() => (s, 1),
        _ => return Err(err()),
    };
    let value: f64 = digits.parse().map_err(|_| err())?;
    if !(value.is_finite() && value > 0.0) {
        return Err(err());
    }
    Ok((value * factor as f64).round() as u64)
}

/// Parses a duration such as `90s`, `10m`, `1h30m` or `250ms`; a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        what: "duration",
        input: input.to_string(),
        expected: DURATION_EXPECTED,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(err())
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if number_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| err())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * seconds_per_unit);
    }
    Ok(total)
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

/// Parses a CPU count such as `0.5` or `2` into the engine's nano-CPUs.
pub fn parse_cpus(input: &str) -> Result<i64, UnitError> {
    let value: f64 = input.trim().parse().map_err(|_| UnitError {
        what: "CPU count",
        input: input.to_string(),
        expected: CPUS_EXPECTED,
    })?;
    if !(value.is_finite() && (0.01..=1024.0).contains(&value)) {
        return Err(UnitError {
            what: "CPU count",
            input: input.to_string(),
            expected: CPUS_EXPECTED,
        });
    }
    Ok((value * 1e9).round() as i64)
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

    #[test]
    fn memory_sizes() {
        assert_eq!(mem("2g"), Some(2 << 30));
        assert_eq!(mem("2G"), Some(2 << 30));
        assert_eq!(mem("512m"), Some(512 << 20));
        assert_eq!(mem("512mb"), Some(512 << 20));
        assert_eq!(mem("1.5g"), Some(3 << 29));
        assert_eq!(mem("10485760"), Some(10 << 20));
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
        assert!(parse_size("lots")
            .unwrap_err()
            .to_string()
            .starts_with("invalid size `lots`"));
    }

    #[test]
    fn memory_error_names_value_and_form() {
        let e = parse_memory("lots").unwrap_err().to_string();
        assert!(e.contains("`lots`") && e.contains("2g"), "{e}");
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
        assert_eq!(dur("0"), Some(Duration::ZERO));
        assert_eq!(dur("10 minutes"), None);
        assert_eq!(dur("m"), None);
        assert_eq!(dur("-3s"), None);
        assert_eq!(dur(""), None);
    }

    #[test]
    fn durations_round_trip() {
        for s in ["10m", "90s", "1h", "250ms", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("2").ok(), Some(2_000_000_000));
        assert_eq!(parse_cpus("0.5").ok(), Some(500_000_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("many").is_err());
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(2 << 30), "2 GiB");
        assert_eq!(format_bytes(1536 << 10), "1.5 MiB");
    }
}
