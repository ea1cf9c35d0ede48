//! Masking of secret values in output, as it streams.
//!
//! Output arrives in chunks of any size, so a secret may be split across two chunks. The masker
//! holds back at most `longest pattern - 1` bytes (a possible start of a secret) and emits the
//! rest at once, which keeps memory bounded whatever the output volume.
//!
//! # What is masked
//!
//! For each secret value (its bytes as given):
//!
//! - the value itself;
//! - its base64 at each of the three byte alignments, in the standard and the URL-safe alphabet.
//!   A secret at byte offset `k` (mod 3) of some encoded data (`base64("user:" + secret)` in an
//!   HTTP Basic header has it at offset 5, alignment 2) shows up in the encoding as a middle part
//!   that depends on the secret's bytes only: the first character whose six bits all come from
//!   the secret up to the last such character. That part is masked wherever it appears (see
//!   [`base64_forms`]). When the secret ends the encoded data, the characters after it (the
//!   last, partial character and the `=` padding) are deterministic too, and are masked with it;
//!   at alignment 0 these are the complete encodings, as before. What may stay visible is at most
//!   one character on each side, holding at most four bits of the secret each;
//! - its hexadecimal form, in lower and in upper case;
//! - its percent-encoding (URL encoding), as JavaScript's `encodeURIComponent` produces it and
//!   in the stricter RFC 3986 form (only `A-Z a-z 0-9 - . _ ~` left as they are, as Python's
//!   `quote(safe="")` or Go's `url.QueryEscape` do), each with upper and lower case hex digits
//!   and, when the secret has a space, with `+` for it (form encoding).
//!
//! Not covered: nested encodings (the URL encoding of a base64 form), base64 wrapped over
//! several lines, mixed-case hex, and any other transformation a command may apply.
//!
//! # Short secrets
//!
//! A partial base64 form (one that is not the complete encoding of the secret at alignment 0)
//! shorter than [`MIN_FRAGMENT_LEN`] characters is not used: a few base64 characters occur in
//! ordinary text by chance, and masking them would mangle it. Six characters are 36 bits, so
//! every aligned form of a secret of 5 bytes or more is masked (an aligned form of an `n`-byte
//! secret has at least `floor(4n/3) - 1` characters), and a secret of 4 bytes or fewer is
//! masked as itself and in its complete forms only (base64 at alignment 0, hex, URL), which are
//! never shorter than the secret itself and so never mask more text than the secret does.

use base64::Engine as _;

/// What a secret is replaced with.
pub const MASK: &[u8] = b"***";

/// The shortest partial base64 form (in characters) that is masked; see the module's docs.
pub const MIN_FRAGMENT_LEN: usize = 6;

#[derive(Debug, Clone)]
pub struct Masker {
    /// Longest first, so that a padded base64 form wins over its unpadded prefix.
    patterns: Vec<Vec<u8>>,
    /// For each byte value, the indices of the patterns that start with it, longest first.
    by_first: Vec<Vec<usize>>,
    /// Bit `256 * a + b` is set when a pattern starts with the bytes `a b` (or is the single
    /// byte `a`): a quick "nothing can start here" for most positions.
    pairs: Vec<u64>,
    pending: Vec<u8>,
    /// How many secrets were masked (or found) so far in this stream.
    hits: u64,
}

/// Where [`Masker::scan`] sends what it lets through.
trait Sink {
    fn bytes(&mut self, data: &[u8]);
}

impl Sink for Vec<u8> {
    fn bytes(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
}

/// A sink that keeps nothing, for finding secrets without producing output.
struct Discard;

impl Sink for Discard {
    fn bytes(&mut self, _data: &[u8]) {}
}

impl Masker {
    /// A masker for these secret values: each value and its encoded forms (see the module's
    /// docs). Empty values are ignored.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
            patterns.extend(secret_forms(secret));
        }
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        patterns.dedup();
        let mut by_first = vec![Vec::new(); 256];
        let mut pairs = vec![0u64; 65536 / 64];
        for (i, p) in patterns.iter().enumerate() {
            by_first[p[0] as usize].push(i);
            let seconds = match p.get(1) {
                Some(&b) => b as usize..b as usize + 1,
                None => 0..256,
            };
            for b in seconds {
                let bit = (p[0] as usize) << 8 | b;
                pairs[bit / 64] |= 1 << (bit % 64);
            }
        }
        Self {
            patterns,
            by_first,
            pairs,
            pending: Vec::new(),
            hits: 0,
        }
    }

    /// Whether there is anything to mask at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest form of a secret this masker looks for, in bytes (0 without secrets). The
    /// masker holds back less than this.
    pub fn longest(&self) -> usize {
        self.patterns.first().map_or(0, Vec::len)
    }

    /// How many secrets (in any form) were masked or found in this stream so far, that is,
    /// since [`Masker::new`] or [`Masker::reset`].
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Forgets the stream: what was held back (dropped, not emitted) and the hit count. For
    /// using one masker on several streams one after the other.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.hits = 0;
    }

    /// Feeds `data` and appends to `out` every byte that can no longer be part of a secret.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.feed(data, out);
    }

    /// Flushes what was held back; call once at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.end(out);
    }

    /// Feeds `data` only to find secrets, producing no output; memory stays bounded as with
    /// [`Masker::push`]. Returns whether a secret was found in the stream so far. A secret at
    /// the very end of the stream is found only by [`Masker::finish_detect`].
    pub fn detect(&mut self, data: &[u8]) -> bool {
        self.feed(data, &mut Discard);
        self.hits > 0
    }

    /// Ends a stream fed to [`Masker::detect`]: whether it contained a secret in any form.
    pub fn finish_detect(&mut self) -> bool {
        self.end(&mut Discard);
        self.hits > 0
    }

    /// Whether `data` (complete) contains a secret in any form.
    pub fn contains_secret(&self, data: &[u8]) -> bool {
        let (_, hits) = self.scan(data, &mut Discard, true);
        hits > 0
    }

    /// Masks `data` in one go (for text that is complete, such as an error message).
    pub fn mask_all(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        self.scan(data, &mut out, true);
        out
    }

    /// Masks a string; see [`Masker::mask_all`].
    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_all(text.as_bytes())).into_owned()
    }

    fn feed(&mut self, data: &[u8], out: &mut impl Sink) {
        if self.patterns.is_empty() {
            out.bytes(data);
            return;
        }
        if self.pending.is_empty() {
            // The usual case: nothing held back, so scan the chunk where it is and keep only
            // its undecided tail.
            let (consumed, hits) = self.scan(data, out, false);
            self.hits += hits;
            self.pending.extend_from_slice(&data[consumed..]);
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let (consumed, hits) = self.scan(&pending, out, false);
            self.hits += hits;
            self.pending = pending;
            self.pending.drain(..consumed);
        }
    }

    fn end(&mut self, out: &mut impl Sink) {
        let pending = std::mem::take(&mut self.pending);
        let (consumed, hits) = self.scan(&pending, out, true);
        self.hits += hits;
        debug_assert_eq!(consumed, pending.len());
    }

    /// Emits masked output for `data` and returns how many bytes were consumed and how many
    /// secrets were masked. Unless `at_end`, stops at the first position where a secret may
    /// begin and not be complete yet.
    fn scan(&self, data: &[u8], out: &mut impl Sink, at_end: bool) -> (usize, u64) {
        let mut hits = 0;
        let mut i = 0;
        let mut run_start = 0;
        while i < data.len() {
            if let Some(&next) = data.get(i + 1) {
                let bit = (data[i] as usize) << 8 | next as usize;
                if self.pairs[bit / 64] & (1 << (bit % 64)) == 0 {
                    i += 1;
                    continue;
                }
            }
            let candidates = &self.by_first[data[i] as usize];
            if candidates.is_empty() {
                i += 1;
                continue;
            }
            let rest = &data[i..];
            let mut patterns = candidates.iter().map(|&c| &self.patterns[c]);
            if !at_end
                && patterns
                    .clone()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            {
                // A secret (or a longer one than what matches now) may begin here and end in
                // the next chunk: hold it back.
                break;
            }
            if let Some(p) = patterns.find(|p| rest.starts_with(p)) {
                out.bytes(&data[run_start..i]);
                out.bytes(MASK);
                hits += 1;
                i += p.len();
                run_start = i;
                continue;
            }
            i += 1;
        }
        out.bytes(&data[run_start..i]);
        (i, hits)
    }
}

/// Every form of `secret` that is masked (not deduplicated, not sorted).
fn secret_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![secret.to_vec()];
    forms.extend(base64_forms(secret));
    forms.extend(hex_forms(secret));
    forms.extend(url_forms(secret));
    forms
}

/// The base64 forms of `secret`, in both alphabets and at each byte alignment `k` (the secret
/// preceded by `k` bytes, modulo 3, of unknown data):
///
/// - the stable middle: the characters whose six bits all come from the secret. With the
///   secret's bits at `8k .. 8(k+n)` of the encoded bit stream, character `j` (bits
///   `6j .. 6j+6`) qualifies when `6j >= 8k` and `6j + 6 <= 8(k+n)`;
/// - the tail, padded and unpadded: from the same first character to the end of the encoding,
///   for a secret that ends the encoded data.
///
/// At alignment 0 the tails are the secret's complete encodings and always used; every other
/// form only when at least [`MIN_FRAGMENT_LEN`] characters long.
pub fn base64_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = Vec::new();
    if secret.is_empty() {
        return forms;
    }
    for (padded, unpadded) in [(&STANDARD, &STANDARD_NO_PAD), (&URL_SAFE, &URL_SAFE_NO_PAD)] {
        for k in 0..3usize {
            let mut data = vec![0u8; k];
            data.extend_from_slice(secret);
            let first = (8 * k).div_ceil(6);
            let end = 8 * (k + secret.len()) / 6;
            let plain = unpadded.encode(&data).into_bytes();
            let full = padded.encode(&data).into_bytes();
            let middle = plain[first..end].to_vec();
            let tails = [plain[first..].to_vec(), full[first..].to_vec()];
            if middle.len() >= MIN_FRAGMENT_LEN {
                forms.push(middle);
            }
            for tail in tails {
                if k == 0 || tail.len() >= MIN_FRAGMENT_LEN {
                    forms.push(tail);
                }
            }
        }
    }
    forms
}

/// The secret in lower and in upper case hexadecimal.
pub fn hex_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    [b"0123456789abcdef", b"0123456789ABCDEF"]
        .iter()
        .map(|digits| {
            secret
                .iter()
                .flat_map(|b| [digits[(b >> 4) as usize], digits[(b & 15) as usize]])
                .collect()
        })
        .collect()
}

/// The secret percent-encoded: as `encodeURIComponent` does and in the strict RFC 3986 form,
/// each with upper and lower case hex digits, and with `+` for a space when it has one.
pub fn url_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    fn uri_component(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
    }
    fn rfc3986(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~".contains(&b)
    }
    let plus_options: &[bool] = if secret.contains(&b' ') {
        &[false, true]
    } else {
        &[false]
    };
    let mut forms = Vec::new();
    for keep in [uri_component as fn(u8) -> bool, rfc3986] {
        for digits in [b"0123456789ABCDEF", b"0123456789abcdef"] {
            for plus in plus_options {
                let mut form = Vec::with_capacity(secret.len() * 3);
                for &b in secret {
                    if keep(b) {
                        form.push(b);
                    } else if b == b' ' && *plus {
                        form.push(b'+');
                    } else {
                        form.extend_from_slice(&[
                            b'%',
                            digits[(b >> 4) as usize],
                            digits[(b & 15) as usize],
                        ]);
                    }
                }
                forms.push(form);
            }
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Masks `input` with `secrets` in one go and fed in chunks of several sizes; every way
    /// must give the same output, which is returned.
    fn masked(secrets: &[&str], input: &str) -> String {
        let m = Masker::new(secrets);
        let whole = m.mask_all(input.as_bytes());
        for chunk in [1, 2, 3, 5, 7, 1000] {
            let mut m = m.clone();
            let mut out = Vec::new();
            for part in input.as_bytes().chunks(chunk) {
                m.push(part, &mut out);
            }
            m.finish(&mut out);
            assert_eq!(out, whole, "chunks of {chunk}: {input:?}");
        }
        String::from_utf8(whole).unwrap()
    }

    #[track_caller]
    fn check(secret: &str, input: &str, expected: &str) {
        assert_eq!(masked(&[secret], input), expected, "secret {secret:?}");
    }

    const HUNTER: &str = "hunter22secret";
    /// Its base64 differs between the alphabets at every alignment.
    const SYMBOLS: &str = "s3cr3t?>?>~~x";

    #[test]
    fn the_value_itself() {
        check(HUNTER, "pw=hunter22secret!", "pw=***!");
        check(HUNTER, "hunter22secrethunter22secret", "******");
        check(HUNTER, "hunter22secre", "hunter22secre");
        assert_eq!(masked(&["abc", "abcdef"], "xabcdefx"), "x***x");
        check("hunter2", "pw=hunter2!", "pw=***!");
    }

    #[test]
    fn base64_at_alignment_0() {
        check(HUNTER, "b64 aHVudGVyMjJzZWNyZXQ= end", "b64 *** end"); // the whole encoding
        check(HUNTER, "b64 aHVudGVyMjJzZWNyZXQ end", "b64 *** end"); // unpadded
        check(HUNTER, "aHVudGVyMjJzZWNyZXR+", "***R+"); // base64(secret + "~")
                                                        // base64(secret + "!"): the last character happens to be the one of the unpadded form.
        check(HUNTER, "aHVudGVyMjJzZWNyZXQh", "***h");
        check(SYMBOLS, "czNjcjN0Pz4/Pn5+eCE", "***CE"); // standard
        check(SYMBOLS, "czNjcjN0Pz4_Pn5-eCE", "***CE"); // URL-safe
        check("hunter2", "aHVudGVyMg== aHVudGVyMg\n", "*** ***\n");
        check("?>?", "Pz4/ Pz4_", "*** ***");
    }

    #[test]
    fn base64_at_alignment_1() {
        check(HUNTER, "YWh1bnRlcjIyc2VjcmV0IQ", "YW***IQ"); // base64("a" + secret + "!")
        check(HUNTER, "YWh1bnRlcjIyc2VjcmV0", "YW***"); // base64("a" + secret)
        check(SYMBOLS, "YXMzY3IzdD8+Pz5+fnh+", "YX***h+"); // base64("a" + secret + "~")
        check(SYMBOLS, "YXMzY3IzdD8-Pz5-fnh-", "YX***h-");
    }

    #[test]
    fn base64_at_alignment_2() {
        check(HUNTER, "YWJodW50ZXIyMnNlY3JldCE", "YWJ***CE"); // base64("ab" + secret + "!")
        check(SYMBOLS, "YWJzM2NyM3Q/Pj8+fn54IQ", "YWJ***IQ");
        check(SYMBOLS, "YWJzM2NyM3Q_Pj8-fn54IQ", "YWJ***IQ");
    }

    #[test]
    fn http_basic_credentials() {
        // base64("user:hunter22secret"): the secret at offset 5, alignment 2, ending the data.
        check(
            HUNTER,
            "Authorization: Basic dXNlcjpodW50ZXIyMnNlY3JldA==\r\n",
            "Authorization: Basic dXNlcjp***\r\n",
        );
    }

    #[test]
    fn hex() {
        check(HUNTER, "id=68756e7465723232736563726574;", "id=***;");
        check(HUNTER, "id=68756E7465723232736563726574;", "id=***;");
    }

    #[test]
    fn url_encoded() {
        let secret = "p@ss w/rd!(x)";
        check(secret, "?q=p%40ss%20w%2Frd!(x)&", "?q=***&"); // encodeURIComponent
        check(secret, "?q=p%40ss%20w%2frd!(x)&", "?q=***&"); // lower-case hex digits
        check(secret, "?q=p%40ss+w%2Frd!(x)&", "?q=***&"); // + for the space
        check(secret, "?q=p%40ss%20w%2Frd%21%28x%29&", "?q=***&"); // RFC 3986
        check(secret, "?q=p%40ss+w%2Frd%21%28x%29&", "?q=***&"); // quote_plus
        check(secret, "?q=p%40ss+w%2frd%21%28x%29&", "?q=***&");
    }

    #[test]
    fn short_secrets_mask_no_short_fragments() {
        // "abcd": its aligned middles are YWJjZ (0), FiY2 (1) and hYmNk (2), all under six.
        check("abcd", "YWJjZ FiY2 hYmNk", "YWJjZ FiY2 hYmNk");
        // Its complete forms are masked.
        check("abcd", "YWJjZA== YWJjZA 61626364", "*** *** ***");
        let mut forms = base64_forms(b"ab");
        forms.sort();
        forms.dedup();
        assert_eq!(forms, [&b"YWI"[..], b"YWI="], "the complete encodings only");
        for n in 5..40 {
            let secret = vec![b'x'; n];
            assert!(
                base64_forms(&secret)
                    .iter()
                    .all(|f| f.len() >= MIN_FRAGMENT_LEN),
                "{n}"
            );
            // Every alignment in both alphabets gives its middle.
            assert!(base64_forms(&secret).len() >= 6, "{n}");
        }
    }

    #[test]
    fn no_secrets_passes_everything() {
        assert_eq!(masked(&[], "anything"), "anything");
        assert_eq!(
            masked(&[""], "anything"),
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

        // Whatever is fed, what is held back stays under the longest form.
        let mut m = Masker::new(&[HUNTER]);
        let mut out = Vec::new();
        for _ in 0..1000 {
            m.push(b"aHVudGVyMjJzZWNyZ", &mut out);
            assert!(m.pending.len() < m.longest());
        }
    }

    #[test]
    fn detection_counts_hits() {
        let mut m = Masker::new(&[HUNTER]);
        assert!(!m.detect(b"nothing here, aHVudGVyMjJz"));
        assert!(m.detect(b"ZWNyZXQ= and more"), "found across the chunks");
        assert_eq!(m.hits(), 1);
        m.reset();
        assert!(!m.detect(b"x hunter22secre"));
        assert!(m.detect(b"t"), "a match decided by this byte");
        m.reset();
        assert!(
            !m.detect(b"aHVudGVyMjJzZWNyZXQ"),
            "may still grow into the padded form"
        );
        assert!(m.finish_detect(), "the end of the stream decides");
        assert!(m.contains_secret(b"..68756e7465723232736563726574.."));
        assert!(!m.contains_secret(b"hunter"));
        let mut out = Vec::new();
        m.reset();
        m.push(b"hunter22secret hunter22secret", &mut out);
        m.finish(&mut out);
        assert_eq!(m.hits(), 2);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// The characters of `encoded` (the base64 of `prefix_len` bytes, the secret of `len`
        /// bytes and more) that depend on the secret's bytes only.
        fn stable_part(encoded: &str, prefix_len: usize, len: usize) -> &str {
            let first = (8 * prefix_len).div_ceil(6);
            let end = 8 * (prefix_len + len) / 6;
            &encoded[first..end]
        }

        fn secret() -> impl Strategy<Value = Vec<u8>> {
            // No `*`: a secret containing the mask could be "made" by masking.
            proptest::collection::vec(any::<u8>().prop_filter("no *", |b| *b != b'*'), 8..48)
        }

        fn around() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..12)
        }

        fn hex(data: &[u8], upper: bool) -> String {
            let h: String = data.iter().map(|b| format!("{b:02x}")).collect();
            if upper {
                h.to_uppercase()
            } else {
                h
            }
        }

        fn chunked(m: &Masker, data: &[u8], sizes: &[usize]) -> Vec<u8> {
            let mut m = m.clone();
            let mut out = Vec::new();
            let mut rest = data;
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (part, tail) = rest.split_at((*size).clamp(1, rest.len()));
                m.push(part, &mut out);
                rest = tail;
            }
            m.finish(&mut out);
            out
        }

        fn contains(haystack: &[u8], needle: &[u8]) -> bool {
            haystack.windows(needle.len()).any(|w| w == needle)
        }

        proptest! {
            #[test]
            fn no_encoding_survives(secret in secret(), before in around(), after in around()) {
                let m = Masker::new(&[&secret]);
                let mut data = before.clone();
                data.extend_from_slice(&secret);
                data.extend_from_slice(&after);
                // The value itself, between arbitrary bytes.
                prop_assert!(!contains(&m.mask_all(&data), &secret));
                // base64 at the alignment `before` gives, in both alphabets, padded or not.
                use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
                for encoded in [STANDARD.encode(&data), URL_SAFE_NO_PAD.encode(&data)] {
                    let stable = stable_part(&encoded, before.len(), secret.len());
                    let out = m.mask_all(encoded.as_bytes());
                    prop_assert!(!contains(&out, stable.as_bytes()), "{encoded} kept {stable}");
                }
                // Hex and URL encodings, between printable text.
                let text = |s: &[u8]| String::from_utf8_lossy(s).replace('*', "");
                for upper in [false, true] {
                    let form = hex(&secret, upper);
                    let input = format!("{}{form}{}", hex(&before, upper), hex(&after, upper));
                    prop_assert!(!contains(&m.mask_all(input.as_bytes()), form.as_bytes()));
                }
                for form in url_forms(&secret) {
                    let mut input = text(&before).into_bytes();
                    input.extend_from_slice(&form);
                    input.extend_from_slice(text(&after).as_bytes());
                    prop_assert!(!contains(&m.mask_all(&input), &form));
                }
            }

            #[test]
            fn streaming_equals_one_shot(
                secret in secret(),
                before in around(),
                after in around(),
                sizes in proptest::collection::vec(1usize..40, 1..8),
            ) {
                let m = Masker::new(&[&secret]);
                let mut data = before.clone();
                data.extend_from_slice(&secret);
                data.extend_from_slice(&after);
                let mut inputs = vec![data.clone()];
                for engine in [
                    &base64::engine::general_purpose::STANDARD,
                    &base64::engine::general_purpose::URL_SAFE,
                ] {
                    inputs.push(engine.encode(&data).into_bytes());
                }
                inputs.push(hex(&data, false).into_bytes());
                // Several occurrences, overlapping forms and partial ones.
                let mut mixed = inputs.concat();
                mixed.extend_from_slice(&secret[..secret.len() / 2]);
                inputs.push(mixed);
                for input in inputs {
                    let whole = m.mask_all(&input);
                    prop_assert_eq!(chunked(&m, &input, &sizes), whole);
                }
            }
        }
    }
}
