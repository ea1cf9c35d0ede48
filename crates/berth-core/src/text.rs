//! Text that someone else chose (a file name written by a sandbox, a tar entry's name), made safe
//! to show on a terminal or to put on one line of a log.
//!
//! A name may hold a newline that starts a line of its own (`x\nberth: run FAKE succeeded`), a
//! carriage return that overwrites what came before, escape sequences that recolour, move the
//! cursor or set the window title, or Unicode bidi controls that make text read in another order
//! than it is stored. [`escape_untrusted`] writes every such character as a visible escape and
//! leaves everything else, ordinary text in any script included, as it is.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is: C0 controls (with TAB, LF, CR and ESC), DEL,
/// C1 controls, the bidi controls (LRM, RLM, ALM, the embeddings and overrides U+202A–U+202E,
/// the isolates U+2066–U+2069) and the line and paragraph separators U+2028 and U+2029.
pub fn is_unsafe_char(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// `text` with every character of [`is_unsafe_char`] escaped: `\n`, `\r`, `\t`, `\0`, and
/// `\u{..}` (hex) for the others, as Rust writes them. Borrowed, unchanged, when there is
/// nothing to escape. A backslash is left as it is, so an escape and the same characters typed
/// literally look alike; the point is that nothing is hidden, not that the result can be
/// decoded.
pub fn escape_untrusted(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(is_unsafe_char) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(escape_untrusted(input), expected, "{input:?}");
    }

    #[test]
    fn ordinary_text_is_unchanged_and_borrowed() {
        for text in [
            "",
            "report.txt",
            "dir/sub dir/file name (1).tar.gz",
            "é ü ß — “quoted” 日本語 العربية עברית 🙂",
            r"C:\path\with\backslashes",
            "zero\u{200b}width joiner\u{200d} stays",
        ] {
            check(text, text);
            assert!(matches!(escape_untrusted(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn controls_are_escaped() {
        check(
            "x\nberth: run FAKE succeeded",
            "x\\nberth: run FAKE succeeded",
        );
        check("a\rb\tc\0d", "a\\rb\\tc\\0d");
        check("\x1b[2J\x1b[1;32mok", "\\u{1b}[2J\\u{1b}[1;32mok");
        check("bell\x07 del\x7f", "bell\\u{7} del\\u{7f}");
        check("c1 \u{85} \u{9b}31m", "c1 \\u{85} \\u{9b}31m");
        check("\x1b]0;title\x07", "\\u{1b}]0;title\\u{7}");
    }

    #[test]
    fn bidi_controls_and_separators_are_escaped() {
        check("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe");
        check("\u{2066}a\u{2069}", "\\u{2066}a\\u{2069}");
        check("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}");
        check("line\u{2028}sep\u{2029}", "line\\u{2028}sep\\u{2029}");
    }

    #[test]
    fn escaped_text_has_nothing_left_to_escape() {
        let all: String = (0u32..0x2100).filter_map(char::from_u32).collect();
        let once = escape_untrusted(&all).into_owned();
        assert!(!once.contains(is_unsafe_char));
        assert_eq!(escape_untrusted(&once), once);
    }
}
