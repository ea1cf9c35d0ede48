//! Prompt templates: `{{ NAME }}` and `{{ STEP.FIELD }}` replaced by plain text.
//!
//! There is no code here to execute: a template is text and references, and rendering is one
//! pass that copies text and inserts values. A value is never scanned again, so a test output
//! containing `{{ diff }}` or `$(rm -rf /)` arrives in the prompt byte for byte. The result is one
//! string, which the caller passes as one argv element or on stdin, never through a shell.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `{{ STEP.FIELD }}` may ask of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A command's output (stdout and stderr), an agent's final message.
    Output,
    /// The exit code, empty when there was none.
    ExitCode,
    /// `succeeded`, `failed`, `timed_out`…
    Status,
    /// Steps with a verdict: `true` or `false`.
    Approved,
    /// Steps with a verdict: the verdict's summary.
    Summary,
    /// Steps with a verdict: the summary, then the requested changes one `- ` line each.
    Feedback,
}

/// Every field, as written.
pub const FIELDS: [(&str, Field); 6] = [
    ("output", Field::Output),
    ("exit_code", Field::ExitCode),
    ("status", Field::Status),
    ("approved", Field::Approved),
    ("summary", Field::Summary),
    ("feedback", Field::Feedback),
];

/// Variables that belong to no step.
pub const GLOBALS: [&str; 4] = ["task", "diff", "iteration", "max_iterations"];

impl Field {
    pub fn as_str(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("output", |(name, _)| name)
    }

    /// Only steps with a verdict have these.
    pub fn needs_verdict(self) -> bool {
        matches!(self, Self::Approved | Self::Summary | Self::Feedback)
    }
}

/// One reference in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `task`, `diff`, `iteration` or `max_iterations`.
    Global(&'static str),
    Step {
        step: String,
        field: Field,
    },
}

impl Var {
    /// The name the value is kept under in a [`Context`]: `diff`, `review.feedback`.
    pub fn key(&self) -> String {
        match self {
            Self::Global(name) => (*name).to_string(),
            Self::Step { step, field } => format!("{step}.{}", field.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template. It is stored as its source text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that cannot be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line} of the template)")]
pub struct TemplateError {
    /// 1-based line within the template.
    pub line: usize,
    pub message: String,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut pos = 0;
        while let Some(found) = source[pos..].find("{{") {
            let open = pos + found;
            if open > pos {
                parts.push(Part::Text(source[pos..open].to_string()));
            }
            let err = |message: String| TemplateError {
                line: source[..open].matches('\n').count() + 1,
                message,
            };
            let Some(len) = source[open + 2..].find("}}") else {
                return Err(err(
                    "`{{` is never closed by `}}`; a literal `{{` is written `{{ \"{{\" }}`"
                        .to_string(),
                ));
            };
            let close = open + 2 + len;
            let inner = source[open + 2..close].trim();
            parts.push(parse_inner(inner).map_err(|e| err(e.to_string()))?);
            pos = close + 2;
        }
        if pos < source.len() {
            parts.push(Part::Text(source[pos..].to_string()));
        }
        Ok(Self {
            source: source.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Every reference, in order of appearance.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    pub fn uses(&self, key: &str) -> bool {
        self.vars().any(|v| v.key() == key)
    }

    /// The template with every reference replaced by its value in `context`. A reference without
    /// a value is an error, never an empty string by accident.
    pub fn render(&self, context: &Context) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    let key = v.key();
                    let value = context.get(&key).ok_or_else(|| TemplateError {
                        line: out.matches('\n').count() + 1,
                        message: format!("`{{{{ {key} }}}}` has no value here"),
                    })?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

/// What `{{ … }}` may hold, for messages.
fn expected_variables() -> String {
    format!(
        "expected {}, or STEP.FIELD with FIELD one of {}",
        GLOBALS.join(", "),
        FIELDS.map(|(n, _)| n).join(", ")
    )
}

/// A `{{ … }}` that names nothing a template can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum VariableError {
    #[error("unknown variable `{{{{ {} }}}}`: {}", .0, expected_variables())]
    Unknown(String),
    #[error("`{{{{ {} }}}}` does not name a step: {}", .0, expected_variables())]
    NotAStep(String),
    #[error("unknown field `{field}` in `{{{{ {inner} }}}}`: expected one of {}", FIELDS.map(|(n, _)| n).join(", "))]
    UnknownField { field: String, inner: String },
}

fn parse_inner(inner: &str) -> Result<Part, VariableError> {
    if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
        return Ok(Part::Text(inner[1..inner.len() - 1].to_string()));
    }
    match inner.split_once('.') {
        None => match GLOBALS.iter().find(|g| **g == inner) {
            Some(g) => Ok(Part::Var(Var::Global(g))),
            None => Err(VariableError::Unknown(inner.to_string())),
        },
        Some((step, field)) => {
            if super::check_name(step).is_err() {
                return Err(VariableError::NotAStep(inner.to_string()));
            }
            match FIELDS.iter().find(|(n, _)| *n == field) {
                Some((_, f)) => Ok(Part::Var(Var::Step {
                    step: step.to_string(),
                    field: *f,
                })),
                None => Err(VariableError::UnknownField {
                    field: field.to_string(),
                    inner: inner.to_string(),
                }),
            }
        }
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(source: String) -> Result<Self, Self::Error> {
        Self::parse(&source)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> Self {
        t.source
    }
}

/// Parses and renders `template` in one go.
pub fn render(template: &str, context: &Context) -> Result<String, TemplateError> {
    Template::parse(template)?.render(context)
}

/// The default limit on one value, in characters.
pub const DEFAULT_VALUE_LIMIT: usize = 20_000;

/// The values a template is rendered with. Each value is cut to the limit when it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    values: BTreeMap<String, String>,
    limit: usize,
}

impl Default for Context {
    fn default() -> Self {
        Self::new(DEFAULT_VALUE_LIMIT)
    }
}

impl Context {
    /// A context whose values are cut to `limit` characters (and a marker).
    pub fn new(limit: usize) -> Self {
        Self {
            values: BTreeMap::new(),
            limit,
        }
    }

    /// Sets `key` (`diff`, `tests.output`) to `value`, cut to the limit.
    pub fn set(&mut self, key: impl Into<String>, value: &str) {
        self.values.insert(key.into(), truncate(value, self.limit));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// `value` if it has at most `limit` characters; otherwise its beginning and its end (where test
/// runners print their summary) around a marker saying how much was cut.
pub fn truncate(value: &str, limit: usize) -> String {
    let total = value.chars().count();
    if total <= limit {
        return value.to_string();
    }
    let head = limit / 2;
    let tail = limit - head;
    let cut = total - limit;
    let start_of_cut = value.char_indices().nth(head).map_or(0, |(i, _)| i);
    let end_of_cut = value
        .char_indices()
        .nth(total - tail)
        .map_or(value.len(), |(i, _)| i);
    format!(
        "{}\n[… berth cut {cut} characters here: values are limited to {limit} …]\n{}",
        &value[..start_of_cut],
        &value[end_of_cut..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> Context {
        let mut c = Context::default();
        for (k, v) in pairs {
            c.set(*k, v);
        }
        c
    }

    #[test]
    fn renders_references() {
        let c = ctx(&[
            ("task", "add a flag"),
            ("review.feedback", "- name it --verbose"),
            ("iteration", "2"),
        ]);
        let cases = [
            ("plain text", "plain text"),
            ("{{task}}", "add a flag"),
            ("Task: {{ task }}.", "Task: add a flag."),
            (
                "{{  review.feedback  }}\n#{{iteration}}",
                "- name it --verbose\n#2",
            ),
            ("a }} b", "a }} b"),
            ("literal {{ \"{{\" }} braces", "literal {{ braces"),
            ("", ""),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &c).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn values_stay_literal() {
        let hostile = [
            "$(rm -rf /)",
            "`reboot`",
            "{{ diff }}",
            "{{ task }} {{",
            "'; DROP TABLE runs; --",
            "\"quoted\" \\ back\\slash\n$HOME",
        ];
        for value in hostile {
            let c = ctx(&[("tests.output", value), ("diff", "SECRET-DIFF")]);
            assert_eq!(
                render("<{{ tests.output }}>", &c).unwrap(),
                format!("<{value}>"),
                "a value is inserted byte for byte and never expanded again"
            );
        }
    }

    #[test]
    fn parse_errors_say_what_is_accepted() {
        let cases = [
            ("{{ nope }}", "unknown variable `{{ nope }}`"),
            ("{{ review.verdict }}", "unknown field `verdict`"),
            ("line\n{{ task", "never closed"),
            ("{{ Bad Step.output }}", "does not name a step"),
            ("{{ }}", "unknown variable"),
            ("{{ a.b.c }}", "unknown field `b.c`"),
        ];
        for (template, want) in cases {
            let e = Template::parse(template).unwrap_err().to_string();
            assert!(e.contains(want), "{template}: {e}");
        }
        let e = Template::parse("one\ntwo\n{{ x }}").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("task, diff, iteration, max_iterations"));
    }

    #[test]
    fn a_missing_value_is_an_error() {
        let e = render("{{ review.summary }}", &Context::default()).unwrap_err();
        assert!(e.message.contains("has no value"), "{e}");
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        assert_eq!(truncate("short", 10), "short");
        let long = format!("{}{}", "a".repeat(100), "z".repeat(100));
        let cut = truncate(&long, 20);
        assert!(
            cut.starts_with("aaaaaaaaaa\n[… berth cut 180 characters"),
            "{cut}"
        );
        assert!(cut.ends_with("…]\nzzzzzzzzzz"), "{cut}");
        // Multi-byte characters are never split.
        let cut = truncate(&"é".repeat(50), 7);
        assert!(cut.starts_with("ééé\n") && cut.ends_with("\néééé"), "{cut}");
        let mut c = Context::new(4);
        c.set("diff", "0123456789");
        assert_eq!(
            c.get("diff"),
            Some("01\n[… berth cut 6 characters here: values are limited to 4 …]\n89")
        );
    }

    #[test]
    fn stored_as_its_source() {
        let t = Template::parse("fix {{ tests.output }}").unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"fix {{ tests.output }}\"");
        assert_eq!(serde_json::from_str::<Template>(&json).unwrap(), t);
        assert!(serde_json::from_str::<Template>("\"{{ x\"").is_err());
        assert!(t.uses("tests.output") && !t.uses("diff"));
    }
}
