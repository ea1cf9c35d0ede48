//! Masking of secret values in output, as it streams.
//!
//! Output arrives in chunks of any size, so a secret may be split across two chunks. The masker
//! holds back at most `longest pattern - 1` bytes (a possible start of a secret) and emits the
//! rest at once, which keeps memory bounded whatever the output volume.

use base64::Engine as _;

/// What a secret is replaced with.
pub const MASK: &[u8] = b"***";

#[derive(Debug, Clone)]
pub struct Masker {
    /// Longest first, so that a padded base64 form wins over its unpadded prefix.
    patterns: Vec<Vec<u8>>,
    first_bytes: [bool; 256],
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for these secret values: each value, and its base64 forms.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
            patterns.push(secret.to_vec());
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                patterns.push(engine.encode(secret).into_bytes());
            }
        }
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        patterns.dedup();
        let mut first_bytes = [false; 256];
        for p in &patterns {
            first_bytes[p[0] as usize] = true;
        }
        Self {
            patterns,
            first_bytes,
            pending: Vec::new(),
        }
    }

    /// Whether there is anything to mask at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Feeds `data` and appends to `out` every byte that can no longer be part of a secret.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.patterns.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        self.pending.extend_from_slice(data);
        let consumed = self.scan(out, false);
        self.pending.drain(..consumed);
    }

    /// Flushes what was held back; call once at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let consumed = self.scan(out, true);
        self.pending.drain(..consumed);
        out.append(&mut self.pending);
    }

    /// Masks `data` in one go (for text that is complete, such as an error message).
    pub fn mask_all(&self, data: &[u8]) -> Vec<u8> {
        let mut masker = Masker {
            pending: Vec::new(),
            ..self.clone()
        };
        let mut out = Vec::with_capacity(data.len());
        masker.push(data, &mut out);
        masker.finish(&mut out);
        out
    }

    /// Masks a string; see [`Masker::mask_all`].
    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_all(text.as_bytes())).into_owned()
    }

    /// Emits masked output for `pending` and returns how many bytes were consumed.
    fn scan(&self, out: &mut Vec<u8>, at_end: bool) -> usize {
        let data = &self.pending;
        let mut i = 0;
        let mut run_start = 0;
        while i < data.len() {
            if !self.first_bytes[data[i] as usize] {
                i += 1;
                continue;
            }
            let rest = &data[i..];
            let may_continue = |rest: &[u8]| {
                self.patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            };
            if !at_end && may_continue(rest) {
                // A secret (or a longer one than what matches now) may begin here and end in
                // the next chunk: hold it back.
                break;
            }
            if let Some(p) = self.patterns.iter().find(|p| rest.starts_with(p)) {
                out.extend_from_slice(&data[run_start..i]);
                out.extend_from_slice(MASK);
                i += p.len();
                run_start = i;
                continue;
            }
            i += 1;
        }
        out.extend_from_slice(&data[run_start..i]);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes and returns the masked output.
    fn check(secrets: &[&str], input: &str, chunk: usize) -> String {
        let mut m = Masker::new(secrets);
        let mut out = Vec::new();
        for part in input.as_bytes().chunks(chunk.max(1)) {
            m.push(part, &mut out);
        }
        m.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_whole_and_split_values() {
        for chunk in [1, 2, 3, 5, 1000] {
            assert_eq!(
                check(&["hunter2"], "pw=hunter2!", chunk),
                "pw=***!",
                "chunk {chunk}"
            );
            assert_eq!(check(&["hunter2"], "hunter2hunter2", chunk), "******");
            assert_eq!(
                check(&["hunter2"], "hunter", chunk),
                "hunter",
                "a prefix at the end is flushed"
            );
            assert_eq!(check(&["abc", "abcdef"], "xabcdefx", chunk), "x***x");
        }
    }

    #[test]
    fn masks_base64_forms() {
        // base64("hunter2") = aHVudGVyMg== ; url-safe is the same here.
        assert_eq!(
            check(&["hunter2"], "b64 aHVudGVyMg== end", 4),
            "b64 *** end"
        );
        assert_eq!(check(&["hunter2"], "raw aHVudGVyMg\n", 4), "raw ***\n");
        // A value whose base64 differs between the standard and url-safe alphabets.
        let secret = "?>?";
        let std = base64::engine::general_purpose::STANDARD.encode(secret);
        let url = base64::engine::general_purpose::URL_SAFE.encode(secret);
        assert_ne!(std, url);
        assert_eq!(check(&[secret], &format!("{std} {url}"), 3), "*** ***");
    }

    #[test]
    fn no_secrets_passes_everything() {
        assert_eq!(check(&[], "anything", 3), "anything");
        assert_eq!(
            check(&[""], "anything", 3),
            "anything",
            "an empty secret masks nothing"
        );
    }

    #[test]
    fn holds_back_at_most_a_pattern_length() {
        let mut m = Masker::new(&["0123456789"]);
        let mut out = Vec::new();
        m.push(&vec![b'x'; 100_000], &mut out);
        assert_eq!(
            out.len(),
            100_000,
            "nothing that cannot start a secret is held"
        );
        m.push(b"01234", &mut out);
        assert_eq!(out.len(), 100_000);
        m.push(b"5678", &mut out);
        m.push(b"9", &mut out);
        m.finish(&mut out);
        assert!(out.ends_with(b"x***"));
    }
}
