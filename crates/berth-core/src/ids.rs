//! Run ids: time-sortable, valid as container names, short enough to type a prefix of.

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A run id from the creation time and 30 bits of randomness: 10 characters of milliseconds
/// since the epoch then 6 random ones, all lower-case Crockford base32, so ids sort by creation.
pub fn run_id(millis: u64, random: u32) -> String {
    let mut id = String::with_capacity(16);
    for shift in (0..10).rev() {
        id.push(ALPHABET[((millis >> (shift * 5)) & 31) as usize] as char);
    }
    for shift in (0..6).rev() {
        id.push(ALPHABET[((random >> (shift * 5)) & 31) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::run_id;

    #[test]
    fn ids_sort_by_time_and_are_names() {
        let a = run_id(1_700_000_000_000, 0x3fff_ffff);
        let b = run_id(1_700_000_000_001, 0);
        assert!(a < b);
        assert_eq!(a.len(), 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(run_id(0, 0), "0000000000000000");
    }
}
