//! `{{ STEP.output }}` of a command step: one rule for `berth workflow run` and the server, so a
//! workflow's prompts are the same wherever it runs.
//!
//! The rule: the command's stdout and stderr interleaved as berth received them (line by line,
//! as the run's output events are), of which the last [`OUTPUT_TAIL`] bytes are kept, starting
//! at a character. The bytes are decoded only at the end, so how the output was cut into lines
//! or events changes nothing; what is not UTF-8 becomes U+FFFD.

/// The most of a command's output kept for `{{ STEP.output }}` (the template cuts further).
pub const OUTPUT_TAIL: usize = 256 * 1024;

/// The tail of a command's output, fed in order; memory stays under twice [`OUTPUT_TAIL`].
#[derive(Debug, Default)]
pub struct OutputTail {
    bytes: Vec<u8>,
}

impl OutputTail {
    /// Appends output as received.
    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > 2 * OUTPUT_TAIL {
            self.bytes.drain(..self.bytes.len() - OUTPUT_TAIL);
        }
    }

    /// Appends one output event: its text, or its bytes in base64 when they were not UTF-8
    /// (`Event::Output`, or a stored `stdout_base64`/`stderr_base64` event). Undecodable base64
    /// is left out: it did not come from berth.
    pub fn push_event(&mut self, text: Option<&str>, data_base64: Option<&str>) {
        if let Some(bytes) = crate::event::output_bytes(text, data_base64) {
            self.push(&bytes);
        }
    }

    /// The last [`OUTPUT_TAIL`] bytes, less the pieces of a character cut at their start.
    pub fn finish(self) -> String {
        let start = self.bytes.len().saturating_sub(OUTPUT_TAIL);
        String::from_utf8_lossy(skip_partial_char(&self.bytes[start..])).into_owned()
    }
}

/// `bytes` without the continuation bytes of a UTF-8 character whose start was cut off (at most
/// three: a character is at most four bytes).
fn skip_partial_char(bytes: &[u8]) -> &[u8] {
    let partial = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0xC0) == 0x80)
        .count();
    &bytes[partial..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(pieces: &[&[u8]]) -> String {
        let mut tail = OutputTail::default();
        for piece in pieces {
            tail.push(piece);
        }
        tail.finish()
    }

    #[test]
    fn short_output_is_kept_whole_in_the_order_received() {
        assert_eq!(
            tail(&[b"out 1\n", b"err 1\n", b"out 2\n"]),
            "out 1\nerr 1\nout 2\n"
        );
        assert_eq!(tail(&[]), "");
    }

    #[test]
    fn the_cut_never_splits_a_character() {
        // "é" is two bytes; the cut falls between them.
        let mut long = b"x\xC3\xA9".to_vec();
        long.extend(vec![b'a'; OUTPUT_TAIL - 1]);
        let text = tail(&[&long]);
        assert_eq!(text.len(), OUTPUT_TAIL - 1);
        assert!(text.bytes().all(|b| b == b'a'));
        // A four-byte character cut after its first byte loses its three other bytes.
        let mut long = "🦀".as_bytes().to_vec();
        long.extend(vec![b'b'; OUTPUT_TAIL - 3]);
        assert_eq!(tail(&[&long]), "b".repeat(OUTPUT_TAIL - 3));
    }

    #[test]
    fn how_the_output_was_cut_into_pieces_changes_nothing() {
        let mut all = Vec::new();
        for i in 0..40_000 {
            all.extend(format!("line {i} é🦀\n").as_bytes());
        }
        let whole = tail(&[&all]);
        for size in [1usize, 7, 4096, 65_536] {
            let pieces: Vec<&[u8]> = all.chunks(size).collect();
            assert_eq!(tail(&pieces), whole, "pieces of {size}");
        }
        assert!(whole.len() <= OUTPUT_TAIL && whole.ends_with("line 39999 é🦀\n"));
    }

    #[test]
    fn events_carry_text_or_base64() {
        let mut tail = OutputTail::default();
        tail.push_event(Some("a\n"), None);
        tail.push_event(None, Some("//4K"));
        tail.push_event(None, Some("not base64!"));
        tail.push_event(Some("b\n"), None);
        assert_eq!(tail.finish(), "a\n\u{FFFD}\u{FFFD}\nb\n");
    }
}
