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

/// A new run id (see [`berth_core::ids::run_id`]).
pub fn new_run_id() -> String {
    let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    berth_core::ids::run_id(millis as u64, rand::rng().random())
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
