//! Log set-up: one JSON object per line on stdout with the event's and its spans' fields flattened
//! (so every line of an attempt carries its `build`), or human text.

use std::io::{IsTerminal, Write};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` (`level` or `target=level,…`) overrides
/// `default_level`. (`Targets` rather than `EnvFilter`: no regex engine in the binary.)
pub fn init(format: LogFormat, default_level: &str, to_stderr: bool) {
    let parse = |text: &str| text.parse::<Targets>().ok();
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| parse(&v))
        .or_else(|| parse(default_level))
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match (format, to_stderr) {
        (LogFormat::Json, false) => registry.with(JsonLines).try_init(),
        (LogFormat::Text, false) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(text_fields())
                    .with_writer(std::io::stdout)
                    .with_ansi(color(std::io::stdout().is_terminal())),
            )
            .try_init(),
        (_, true) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(text_fields())
                    .with_writer(std::io::stderr)
                    .with_ansi(color(std::io::stderr().is_terminal()))
                    .without_time(),
            )
            .try_init(),
    };
}

/// `message key=value …`, each value with its control characters escaped: a command's output
/// or a Hydra answer must not move the cursor, ring the bell, or forge a log line with CR/LF.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = escape_controls(unquote(&format!("{value:?}")));
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// A string field as `phase=activating` rather than `phase="activating"`; one with a space, a
/// quote or an escape keeps its quotes, so `key=value` still splits.
fn unquote(debug: &str) -> &str {
    match debug.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
        Some(inner) if !inner.is_empty() && !inner.contains([' ', '"', '\\', '=']) => inner,
        _ => debug,
    }
}

/// `text` with every control character (C0, DEL, C1) and every bidirectional override written
/// as an escape (`\n`, `\u{1b}`), for anything printed to a terminal that came from outside.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>).
pub fn color(is_terminal: bool) -> bool {
    color_with(is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

fn color_with(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Writes each event as a flat JSON object.
struct JsonLines;

#[derive(Default, Clone)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(error_chain(value)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLines {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    fields.extend(span_fields.0.clone());
                }
            }
        }
        let mut own = Fields::default();
        event.record(&mut own);
        fields.extend(own.0);
        let message = fields
            .remove("message")
            .unwrap_or_else(|| Value::String(String::new()));
        fields.insert("target".into(), event.metadata().target().into());
        let level = event.metadata().level().as_str().to_lowercase();
        let line = json_line(
            &message,
            &jiff::Timestamp::now().to_string(),
            &level,
            &fields,
        );
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// An error as `what: cause: cause`, not its Debug form.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// `{"message": …, "timestamp": …, "level": …, <fields sorted by name>}` and a newline: the
/// message first, where a reader's eye (and `less`) starts.
fn json_line(message: &Value, timestamp: &str, level: &str, fields: &Map<String, Value>) -> String {
    let mut line = String::with_capacity(256);
    line.push_str("{\"message\":");
    line.push_str(&message.to_string());
    line.push_str(",\"timestamp\":");
    line.push_str(&Value::from(timestamp).to_string());
    line.push_str(",\"level\":");
    line.push_str(&Value::from(level).to_string());
    for (key, value) in fields {
        if matches!(key.as_str(), "timestamp" | "level") {
            continue;
        }
        line.push(',');
        line.push_str(&Value::from(key.as_str()).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push_str("}\n");
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn message_comes_first_and_the_line_is_json() {
        let mut fields = Map::new();
        fields.insert("build".into(), 4821.into());
        fields.insert("answer".into(), "queued build 4821 \u{1b}[31m".into());
        fields.insert("level".into(), "spoofed".into());
        let line = json_line(&"queued".into(), "2026-01-01T00:00:00Z", "info", &fields);
        assert!(
            line.starts_with(
                r#"{"message":"queued","timestamp":"2026-01-01T00:00:00Z","level":"info","#
            ),
            "{line}"
        );
        assert!(line.ends_with("}\n") && !line.contains('\u{1b}'), "{line}");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["build"], 4821);
        assert_eq!(value["level"], "info");
    }

    #[test]
    fn errors_are_displayed_with_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write state.json")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "cannot write state.json: disk full");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("a\u{1b}[2Jb\u{7}c\rd\ne\u{9b}f\u{202e}g é"),
            "a\\u{1b}[2Jb\\u{7}c\\rd\\ne\\u{9b}f\\u{202e}g é"
        );
    }

    #[test]
    fn plain_words_lose_their_quotes() {
        assert_eq!(unquote("\"activating\""), "activating");
        assert_eq!(unquote("\"two words\""), "\"two words\"");
        assert_eq!(unquote("\"a\\nb\""), "\"a\\nb\"");
        assert_eq!(unquote("\"\""), "\"\"");
        assert_eq!(unquote("4821"), "4821");
    }

    #[test]
    fn no_color_wins_over_a_terminal() {
        use std::ffi::OsStr;
        assert!(color_with(true, None));
        assert!(
            color_with(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!color_with(true, Some(OsStr::new("1"))));
        assert!(!color_with(false, None));
    }
}
