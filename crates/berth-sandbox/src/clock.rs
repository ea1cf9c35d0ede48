//! Time and identifiers, kept in one place.

use rand::Rng;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, as an RFC 3339 string in UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::UNIX_EPOCH.to_string())
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new run id: 10 characters of milliseconds since the epoch then 6 random ones, all in
/// lower-case Crockford base32, so ids sort by creation time and are valid container names.
pub fn new_run_id() -> String {
    let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let mut id = String::with_capacity(16);
    for shift in (0..10).rev() {
        id.push(ALPHABET[((millis >> (shift * 5)) & 31) as usize] as char);
    }
    let mut rng = rand::rng();
    for _ in 0..6 {
        id.push(ALPHABET[rng.random_range(0..32)] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_sort_and_are_unique() {
        let a = super::new_run_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_run_id();
        assert_eq!(a.len(), 16);
        assert!(a < b, "{a} < {b}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
}
