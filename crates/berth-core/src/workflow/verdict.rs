//! Verdicts: whether a reviewer approved, from the `result.json` it wrote to `$BERTH_OUT` or,
//! failing that, from a declared rule on its final message.
//!
//! A verdict that is missing or malformed is an error, never an approval.
//!
//! `result.json`:
//!
//! ```json
//! {"approved": false, "summary": "one test still fails", "requested_changes": ["handle empty input"]}
//! ```
//!
//! `approved` is required and must be a boolean; `summary` (a string) and `requested_changes` (a
//! list of strings) may be left out but must have their type when present. Other fields are
//! allowed and listed in [`Verdict::ignored_fields`]: agents like to add a `confidence` or `notes`,
//! and refusing them would turn a clear approval into a failure, while the one field that decides
//! is checked strictly (a misspelt `aproved` leaves `approved` missing, which is an error).

use serde::{Deserialize, Serialize};

/// The file a reviewer writes, relative to `$BERTH_OUT`, unless the workflow names another.
pub const VERDICT_FILE: &str = "result.json";

/// The agent's final message, if `event` (one of berth's events as JSON, as in `events.jsonl`
/// and in a run's stored events) is the agent's final result: its answer, or its error. This is
/// what `{{ STEP.output }}` shows for an agent step and what a verdict's rule reads.
pub fn final_message(event: &serde_json::Value) -> Option<&str> {
    let agent = &event["agent"];
    if event["event"] != "agent" || agent["type"] != "final_result" {
        return None;
    }
    agent["text"].as_str().or(agent["error"].as_str())
}

/// A larger `result.json` is refused unread.
pub const MAX_VERDICT_BYTES: usize = 256 * 1024;

/// Reads what [`parse_verdict_file`] looks at from a verdict file the caller opened: at most one
/// byte more than [`MAX_VERDICT_BYTES`], so a larger file is refused as too large, never read
/// whole.
pub fn read_verdict_file(file: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    file.take(MAX_VERDICT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A reviewer's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub approved: bool,
    pub summary: String,
    pub requested_changes: Vec<String>,
    pub source: VerdictSource,
    /// Fields of `result.json` that berth does not know, kept out of the decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_fields: Vec<String>,
}

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictSource {
    /// The file in `$BERTH_OUT`.
    File,
    /// The workflow's rule on the agent's final message.
    FinalMessage,
}

impl Verdict {
    /// What `{{ STEP.feedback }}` shows: the summary, then each requested change on a `- ` line.
    pub fn feedback(&self) -> String {
        let mut out = self.summary.trim_end().to_string();
        for change in &self.requested_changes {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str("- ");
            out.push_str(change.trim_end());
        }
        out
    }
}

/// Why there is no verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerdictError {
    #[error("{file} is empty")]
    Empty { file: String },
    #[error("{file} is larger than {MAX_VERDICT_BYTES} bytes")]
    TooLarge { file: String },
    #[error("{file} is not JSON: {detail}")]
    NotJson { file: String, detail: String },
    #[error("{file} must be a JSON object like {{\"approved\": true, \"summary\": \"…\", \"requested_changes\": []}}, found {found}")]
    NotAnObject { file: String, found: String },
    #[error(
        "{file} has no `approved` field: it must say `\"approved\": true` or `\"approved\": false`"
    )]
    MissingApproved { file: String },
    #[error("{file}: `{field}` must be {expected}, found {found}")]
    WrongType {
        file: String,
        field: String,
        expected: String,
        found: String,
    },
    #[error("the reviewer wrote no {file} to $BERTH_OUT and the workflow declares no rule for its final message")]
    Missing { file: String },
    #[error("the reviewer wrote no {file} to $BERTH_OUT and left no final message")]
    NoFinalMessage { file: String },
    #[error("the reviewer wrote no {file} to $BERTH_OUT and its final message matches neither `approve` ({approve}) nor `reject` ({reject})")]
    NoRuleMatched {
        file: String,
        approve: String,
        reject: String,
    },
    #[error(
        "the reviewer's final message matches both `approve` ({approve}) and `reject` ({reject})"
    )]
    Ambiguous { approve: String, reject: String },
}

/// Reads a `result.json` (named `result.json` in errors).
pub fn parse_verdict(bytes: &[u8]) -> Result<Verdict, VerdictError> {
    parse_verdict_file(VERDICT_FILE, bytes)
}

/// Reads a verdict file; `file` names it in errors.
pub fn parse_verdict_file(file: &str, bytes: &[u8]) -> Result<Verdict, VerdictError> {
    let file = file.to_string();
    if bytes.len() > MAX_VERDICT_BYTES {
        return Err(VerdictError::TooLarge { file });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(VerdictError::Empty { file });
    }
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return Err(VerdictError::NotJson {
                file,
                detail: e.to_string(),
            })
        }
    };
    let serde_json::Value::Object(map) = value else {
        return Err(VerdictError::NotAnObject {
            found: describe(&value),
            file,
        });
    };
    let wrong = |field: &str, expected: &str, found: &serde_json::Value| VerdictError::WrongType {
        file: file.clone(),
        field: field.to_string(),
        expected: expected.to_string(),
        found: describe(found),
    };
    let approved = match map.get("approved") {
        None => return Err(VerdictError::MissingApproved { file }),
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => return Err(wrong("approved", "true or false", other)),
    };
    let summary = match map.get("summary") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(wrong("summary", "a string", other)),
    };
    let requested_changes = match map.get("requested_changes") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut changes = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    serde_json::Value::String(s) => changes.push(s.clone()),
                    other => {
                        return Err(wrong(&format!("requested_changes[{i}]"), "a string", other))
                    }
                }
            }
            changes
        }
        Some(other) => return Err(wrong("requested_changes", "a list of strings", other)),
    };
    let ignored_fields = map
        .keys()
        .filter(|k| !matches!(k.as_str(), "approved" | "summary" | "requested_changes"))
        .cloned()
        .collect();
    Ok(Verdict {
        approved,
        summary,
        requested_changes,
        source: VerdictSource::File,
        ignored_fields,
    })
}

fn describe(value: &serde_json::Value) -> String {
    let mut text = value.to_string();
    if text.chars().count() > 40 {
        text = text.chars().take(40).collect::<String>() + "…";
    }
    let kind = match value {
        serde_json::Value::Null => return "null".into(),
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "the string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    };
    format!("{kind} {text}")
}

/// A regular expression from a workflow file, stored as its source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

/// The most a compiled pattern may take; a workflow file may come from anyone's repository.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A verdict pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatternError {
    #[error("an empty pattern matches every message")]
    Empty,
    #[error("not a regular expression: {0}")]
    Invalid(#[from] regex::Error),
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        let regex = regex::RegexBuilder::new(source)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches anywhere in `text` (anchor it with `^` or `(?m)^`).
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl TryFrom<String> for Pattern {
    type Error = PatternError;
    fn try_from(source: String) -> Result<Self, Self::Error> {
        Self::new(&source)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> Self {
        p.source
    }
}

/// How a step's verdict is found: its file, else the rule on its final message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRule {
    /// Relative to `$BERTH_OUT`.
    pub file: String,
    pub fallback: Option<MessageRule>,
}

/// A rule on an agent's final message, used only when the verdict file is missing. Both patterns
/// are required, so a message that matches neither is an error rather than a silent rejection or
/// approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRule {
    pub approve: Pattern,
    pub reject: Pattern,
}

impl MessageRule {
    /// The verdict the final message `message` declares.
    pub fn apply(&self, file: &str, message: &str) -> Result<Verdict, VerdictError> {
        if message.trim().is_empty() {
            return Err(VerdictError::NoFinalMessage { file: file.into() });
        }
        let approved = match (
            self.approve.is_match(message),
            self.reject.is_match(message),
        ) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => {
                return Err(VerdictError::Ambiguous {
                    approve: self.approve.as_str().into(),
                    reject: self.reject.as_str().into(),
                })
            }
            (false, false) => {
                return Err(VerdictError::NoRuleMatched {
                    file: file.into(),
                    approve: self.approve.as_str().into(),
                    reject: self.reject.as_str().into(),
                })
            }
        };
        Ok(Verdict {
            approved,
            summary: message.trim().to_string(),
            requested_changes: Vec::new(),
            source: VerdictSource::FinalMessage,
            ignored_fields: Vec::new(),
        })
    }
}

impl VerdictRule {
    /// The verdict of a step that ended successfully: from `file_contents` (the verdict file's
    /// bytes, `None` when the step wrote none), else from the rule on `final_message`. A verdict
    /// file that exists but is malformed is an error even when the rule would match: the
    /// reviewer meant to decide through the file, and guessing from its prose would hide that.
    pub fn decide(
        &self,
        file_contents: Option<&[u8]>,
        final_message: Option<&str>,
    ) -> Result<Verdict, VerdictError> {
        if let Some(bytes) = file_contents {
            return parse_verdict_file(&self.file, bytes);
        }
        match &self.fallback {
            None => Err(VerdictError::Missing {
                file: self.file.clone(),
            }),
            Some(rule) => rule.apply(&self.file, final_message.unwrap_or("")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_json() {
        let v = parse_verdict(
            br#"{"approved": false, "summary": "close", "requested_changes": ["a", "b"], "confidence": 0.8}"#,
        )
        .unwrap();
        assert!(!v.approved);
        assert_eq!(v.summary, "close");
        assert_eq!(v.requested_changes, ["a", "b"]);
        assert_eq!(v.source, VerdictSource::File);
        assert_eq!(v.ignored_fields, ["confidence"]);
        assert_eq!(v.feedback(), "close\n- a\n- b");

        let v = parse_verdict(b" {\"approved\": true}\n").unwrap();
        assert!(v.approved && v.summary.is_empty() && v.requested_changes.is_empty());
        let v = parse_verdict(br#"{"approved": true, "summary": null, "requested_changes": null}"#)
            .unwrap();
        assert!(v.approved);
    }

    #[test]
    fn malformed_verdicts_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "result.json is empty"),
            (b"  \n", "result.json is empty"),
            (b"approved", "result.json is not JSON"),
            (b"{\"approved\": true", "result.json is not JSON"),
            (b"\xff\xfe", "result.json is not JSON"),
            (b"true", "must be a JSON object"),
            (b"[{\"approved\": true}]", "must be a JSON object"),
            (b"{}", "has no `approved` field"),
            (b"{\"aproved\": true}", "has no `approved` field"),
            (
                b"{\"approved\": \"yes\"}",
                "`approved` must be true or false, found the string \"yes\"",
            ),
            (
                b"{\"approved\": 1}",
                "`approved` must be true or false, found a number 1",
            ),
            (
                b"{\"approved\": null}",
                "`approved` must be true or false, found null",
            ),
            (
                b"{\"approved\": false, \"summary\": 3}",
                "`summary` must be a string",
            ),
            (
                b"{\"approved\": false, \"requested_changes\": \"all\"}",
                "`requested_changes` must be a list of strings",
            ),
            (
                b"{\"approved\": false, \"requested_changes\": [\"a\", 2]}",
                "`requested_changes[1]` must be a string",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse_verdict(bytes).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(bytes)
            );
        }
        let big = vec![b' '; MAX_VERDICT_BYTES + 1];
        assert!(matches!(
            parse_verdict(&big),
            Err(VerdictError::TooLarge { .. })
        ));
        // Reading stops one byte past the limit: enough to refuse, never the whole file.
        let huge = vec![b' '; 3 * MAX_VERDICT_BYTES];
        let read = read_verdict_file(&huge[..]).unwrap();
        assert_eq!(read.len(), MAX_VERDICT_BYTES + 1);
        assert!(matches!(
            parse_verdict(&read),
            Err(VerdictError::TooLarge { .. })
        ));
        assert_eq!(read_verdict_file(&b"{}"[..]).unwrap(), b"{}");
    }

    fn rule(fallback: bool) -> VerdictRule {
        VerdictRule {
            file: VERDICT_FILE.into(),
            fallback: fallback.then(|| MessageRule {
                approve: Pattern::new(r"(?m)^APPROVED\b").unwrap(),
                reject: Pattern::new(r"(?m)^CHANGES REQUESTED\b").unwrap(),
            }),
        }
    }

    #[test]
    fn the_file_comes_first_then_the_rule() {
        // (file, final message, with a rule, approved? or the error's text)
        type Case<'a> = (
            Option<&'a [u8]>,
            Option<&'a str>,
            bool,
            Result<bool, &'a str>,
        );
        let cases: &[Case] = &[
            (
                Some(br#"{"approved": true}"#),
                Some("CHANGES REQUESTED"),
                true,
                Ok(true),
            ),
            (
                Some(br#"{"approved": false}"#),
                Some("APPROVED"),
                true,
                Ok(false),
            ),
            (Some(b"{oops"), Some("APPROVED"), true, Err("is not JSON")),
            (None, Some("Looks good.\nAPPROVED"), true, Ok(true)),
            (None, Some("CHANGES REQUESTED\n- rename x"), true, Ok(false)),
            (
                None,
                Some("I think it is APPROVED"),
                true,
                Err("matches neither"),
            ),
            (
                None,
                Some("APPROVED\nCHANGES REQUESTED"),
                true,
                Err("matches both"),
            ),
            (None, Some("   "), true, Err("left no final message")),
            (None, None, true, Err("left no final message")),
            (None, Some("APPROVED"), false, Err("declares no rule")),
        ];
        for (file, message, with_rule, want) in cases {
            let got = rule(*with_rule).decide(*file, *message);
            match (got, want) {
                (Ok(v), Ok(approved)) => assert_eq!(v.approved, *approved, "{message:?}"),
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e}"),
                (got, want) => panic!("{file:?} {message:?}: got {got:?}, want {want:?}"),
            }
        }
        let v = rule(true)
            .decide(None, Some("CHANGES REQUESTED: rename x\n"))
            .unwrap();
        assert_eq!(v.source, VerdictSource::FinalMessage);
        assert_eq!(v.feedback(), "CHANGES REQUESTED: rename x");
    }

    #[test]
    fn patterns() {
        assert!(Pattern::new("(")
            .unwrap_err()
            .to_string()
            .contains("not a regular expression"));
        assert!(Pattern::new("").is_err());
        assert!(
            Pattern::new("a{1000}{1000}").is_err(),
            "too large to compile"
        );
        let p: Pattern = serde_json::from_str("\"^ok\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"^ok\"");
        assert!(serde_json::from_str::<Pattern>("\"(\"").is_err());
    }
}
