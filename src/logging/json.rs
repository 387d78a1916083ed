//! `log.format = "json"`: one JSON object a line, in the shape log collectors index
//! without a parser of their own:
//!
//! ```json
//! {"timestamp":"2026-11-30T07:31:02.123456Z","level":"WARN","target":"readtier::tier",
//!  "message":"…","fields":{"zone":"a","error":"…"},
//!  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7",
//!  "spans":["member_miss","redis.get"]}
//! ```
//!
//! `trace_id` and `span_id` are those of the innermost span that records them (the
//! member-miss span, see [`super::trace`]); they are absent outside a request that
//! carries a trace. Span fields are kept by the log layer as JSON text
//! (`JsonFields`), read back here only for an event that is written.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `log.format = "json"`.
pub(super) struct JsonLines;

/// An event's fields, the message apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Written in this order (a `Map` would sort the keys: timestamp first reads
        // better in a terminal and in a collector's raw view).
        let mut line: Vec<(&str, Value)> = vec![
            ("timestamp", timestamp.into()),
            ("level", meta.level().as_str().into()),
            ("target", meta.target().into()),
            ("message", fields.message.unwrap_or_default().into()),
        ];
        if !fields.fields.is_empty() {
            line.push(("fields", Value::Object(fields.fields)));
        }
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            let (mut trace_id, mut span_id) = (None, None);
            for span in scope.from_root() {
                names.push(Value::from(span.name()));
                let ext = span.extensions();
                let Some(text) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(f)) = serde_json::from_str::<Value>(text.as_str()) {
                    // Innermost wins: the scope runs from the root down.
                    if let Some(t) = f.get("trace_id") {
                        trace_id = Some(t.clone());
                    }
                    if let Some(s) = f.get("span_id") {
                        span_id = Some(s.clone());
                    }
                }
            }
            if let Some(t) = trace_id {
                line.push(("trace_id", t));
            }
            if let Some(s) = span_id {
                line.push(("span_id", s));
            }
            if !names.is_empty() {
                line.push(("spans", Value::Array(names)));
            }
        }
        writer.write_char('{')?;
        for (i, (key, value)) in line.iter().enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            write!(writer, "\"{key}\":{value}")?;
        }
        writer.write_str("}\n")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_the_fields_and_the_trace_of_the_innermost_span() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || sink.clone())
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "readtier::x", "outside");
            let miss = tracing::warn_span!(
                "member_miss",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            miss.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            miss.record("span_id", "00f067aa0ba902b7");
            let _m = miss.enter();
            let _r = tracing::info_span!("redis.get").entered();
            tracing::warn!(
                zone = "a",
                attempts = 2u64,
                ok = false,
                "tier \"read\" failed"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["target"], "readtier::x");
        assert!(lines[0].get("trace_id").is_none() && lines[0].get("fields").is_none());
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        let l = &lines[1];
        assert_eq!(l["message"], "tier \"read\" failed");
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["fields"]["zone"], "a");
        assert_eq!(l["fields"]["attempts"], 2);
        assert_eq!(l["fields"]["ok"], false);
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(l["span_id"], "00f067aa0ba902b7");
        assert_eq!(l["spans"], serde_json::json!(["member_miss", "redis.get"]));
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
    }
}
