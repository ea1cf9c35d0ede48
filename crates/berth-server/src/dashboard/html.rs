//! HTML by hand: escaping, URL encoding and the page frame. Every value that reaches a page goes
//! through [`esc`] (text and attribute values alike) or [`url_part`] (inside a URL).

use std::fmt::Write;

/// `s` escaped for HTML text and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a path segment or a query value (everything but unreserved
/// characters).
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An artifact path for a URL: each segment encoded, the slashes kept.
pub fn url_path(path: &str) -> String {
    path.split('/').map(url_part).collect::<Vec<_>>().join("/")
}

/// A state as a badge; the class is chosen from a fixed list, never taken from the value.
pub fn badge(state: &str) -> String {
    let class = match state {
        "succeeded" => "ok",
        "failed" | "error" | "lost" | "timed_out" => "bad",
        "cancelled" => "muted",
        "running" | "claimed" => "live",
        _ => "wait",
    };
    format!(
        r#"<span class="badge {class}" data-state="{}">{}</span>"#,
        esc(state),
        esc(state)
    )
}

/// An optional value, or a dash.
pub fn opt(value: Option<&str>) -> String {
    value.map_or_else(|| "—".to_string(), esc)
}

/// An RFC 3339 timestamp, shortened to the second and without the `T`.
pub fn time(ts: &str) -> String {
    let short: String = ts.chars().take(19).collect();
    format!(
        r#"<time datetime="{}">{}</time>"#,
        esc(ts),
        esc(&short.replace('T', " "))
    )
}

/// A unified diff with a class per line kind.
pub fn diff(patch: &str) -> String {
    let mut out = String::from(r#"<pre class="diff">"#);
    for line in patch.lines() {
        let class = if line.starts_with("+++") || line.starts_with("---") {
            "file"
        } else if line.starts_with("diff ") || line.starts_with("index ") {
            "head"
        } else if line.starts_with("@@") {
            "hunk"
        } else if line.starts_with('+') {
            "add"
        } else if line.starts_with('-') {
            "del"
        } else {
            "ctx"
        };
        // Block spans: each is a line, without a newline character between them.
        let _ = write!(out, r#"<span class="{class}">{}</span>"#, esc(line));
    }
    out.push_str("</pre>");
    out
}

/// Who is signed in, for the page frame.
pub struct Frame<'a> {
    pub who: &'a str,
    pub admin: bool,
    pub csrf: &'a str,
}

/// A whole page: the header with the navigation and sign-out form, then `body`.
pub fn page(title: &str, frame: Option<&Frame>, body: &str) -> String {
    let nav = match frame {
        Some(f) => {
            let admin = if f.admin {
                r#"<a href="/ui/admin">Admin</a>"#
            } else {
                ""
            };
            format!(
                r#"<nav><a href="/ui/runs">Runs</a><a href="/ui/workflows">Workflows</a><a href="/ui/runners">Runners</a>{admin}</nav>
<form method="post" action="/ui/signout" class="signout"><input type="hidden" name="csrf" value="{}"><span class="who">{}</span> <button type="submit">Sign out</button></form>"#,
                esc(f.csrf),
                esc(f.who)
            )
        }
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · berth</title>
<link rel="stylesheet" href="/ui/assets/dashboard.css">
<script src="/ui/assets/dashboard.js" defer></script>
</head>
<body>
<header><a class="brand" href="/ui/runs">berth</a>{nav}</header>
<main>
{body}
</main>
</body>
</html>
"#,
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert('x')</script> & "q""#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn encodes_url_parts() {
        assert_eq!(url_part("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        assert_eq!(url_path("berth/diff patch"), "berth/diff%20patch");
    }

    #[test]
    fn a_hostile_state_is_escaped_and_gets_a_fixed_class() {
        let b = badge(r#"x" onclick="y"#);
        assert!(b.contains(r#"class="badge wait""#));
        assert!(!b.contains(r#"" onclick"#));
    }

    #[test]
    fn diff_lines_are_escaped() {
        let d = diff("+<img src=x>\n-a\n@@ -1 +1 @@");
        assert!(d.contains(r#"<span class="add">+&lt;img src=x&gt;</span>"#));
        assert!(d.contains(r#"<span class="del">-a</span>"#));
        assert!(d.contains(r#"<span class="hunk">"#));
    }
}
