//! Logs and traces: how the process writes its log (`log.format`, `log.level`), the
//! filter an operator changes at run time (`PUT /admin/log-level`), W3C trace context
//! on the miss path ([`trace`]), and OpenTelemetry export (`otel.endpoint`, [`otel`]).
//!
//! One `tracing` subscriber per process, installed by the command line before
//! anything runs:
//! - the log layer (text or [`json`] lines on stderr) under a filter that can be
//!   swapped while the process runs (tracing-subscriber's `reload`); a filter change
//!   rebuilds tracing's per-call-site interest cache, so a disabled event costs what
//!   it did before;
//! - when `otel.endpoint` is set, the OpenTelemetry layer under a filter of its own
//!   (readtier's spans at DEBUG and above), so changing the log level never changes
//!   what is exported.
//!
//! Nothing here runs on the hit path: spans are made only once a member lookup has
//! missed L1 (see [`trace`]), and the hit path emits no event.
//!
//! A process that embeds readtier (the in-process tests) keeps its own subscriber:
//! [`install`] is then never called, and the log-level endpoint says so.

mod json;
pub mod otel;
pub mod trace;

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, OtelConfig};

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "{filter:?} is not a log filter such as \"info\" or \"warn,readtier=debug\": {reason}"
    )]
    Filter { filter: String, reason: String },
    #[error(
        "this process's logging is set up by the program that embeds readtier, not by readtier"
    )]
    NotInstalled,
    #[error("cannot change the log filter: {0}")]
    Reload(String),
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
    #[error("OpenTelemetry exporter to {endpoint}: {reason}")]
    Otel { endpoint: String, reason: String },
}

/// The swappable filter of the log layer, once installed.
struct FilterControl {
    /// Replaces the log layer's filter (type-erased reload handle).
    reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
    /// The directives in force, as given.
    current: Mutex<String>,
}

static FILTER: OnceLock<FilterControl> = OnceLock::new();

/// Keeps the OpenTelemetry exporter alive; dropping it flushes the spans not yet
/// exported (bounded by `otel.timeout`).
pub struct Guard {
    otel: Option<otel::Exporter>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(o) = self.otel.take() {
            o.shutdown();
        }
    }
}

/// Parses filter directives strictly: a directive the filter would drop with a
/// warning is an error here, so what an operator asks for is what runs.
pub fn parse_filter(text: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| LoggingError::Filter {
            filter: text.to_string(),
            reason: e.to_string(),
        })
}

/// The filter the process starts with: `RUST_LOG` when set (the convention of
/// tracing programs and of this repository's scripts), else `log.level`.
fn initial_filter(log: &LogConfig) -> (String, Option<String>) {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match parse_filter(&v) {
            Ok(_) => (v, None),
            Err(e) => (log.level.clone(), Some(e.to_string())),
        },
        _ => (log.level.clone(), None),
    }
}

/// Installs the process's subscriber: the log layer in `log.format` under the initial
/// filter, and the OpenTelemetry layer when `otel.endpoint` is set.
pub fn install(log: &LogConfig, otel_cfg: &OtelConfig) -> Result<Guard, LoggingError> {
    let (text, bad_rust_log) = initial_filter(log);
    let (filter, handle) = reload::Layer::new(parse_filter(&text)?);
    // Colours only for a terminal: a file or a collector gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let log_layer = match log.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
            .boxed(),
    }
    .with_filter(filter);
    let exporter = match otel_cfg.endpoint.trim() {
        "" => None,
        _ => Some(otel::Exporter::new(otel_cfg)?),
    };
    let otel_layer = exporter.as_ref().map(|e| {
        tracing_opentelemetry::layer()
            .with_tracer(e.tracer())
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("readtier", tracing::Level::DEBUG),
            )
    });
    tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    let _ = FILTER.set(FilterControl {
        reload: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        current: Mutex::new(text),
    });
    if exporter.is_some() {
        trace::otel_installed();
    }
    if let Some(e) = bad_rust_log {
        tracing::warn!(error = %e, "RUST_LOG ignored: log.level is used instead");
    }
    Ok(Guard { otel: exporter })
}

/// The log filter in force, or `None` when readtier did not install the subscriber.
pub fn current_filter() -> Option<String> {
    let control = FILTER.get()?;
    let current = control.current.lock().unwrap_or_else(|p| p.into_inner());
    Some(current.clone())
}

/// Replaces the log filter; returns the one it replaced.
pub fn set_filter(text: &str) -> Result<String, LoggingError> {
    let filter = parse_filter(text)?;
    let control = FILTER.get().ok_or(LoggingError::NotInstalled)?;
    let mut current = control.current.lock().unwrap_or_else(|p| p.into_inner());
    (control.reload)(filter).map_err(LoggingError::Reload)?;
    let previous = std::mem::replace(&mut *current, text.to_string());
    drop(current);
    tracing::warn!(filter = text, previous = %previous, "log filter changed");
    Ok(previous)
}

/// The filter for a plain level name (`trace` … `error`, `off`; any case), or `None`
/// for anything else. Below `warn` the PostgreSQL driver stays at `warn`: at `debug`
/// it logs every statement's parameters, which are member ids.
pub fn filter_for_level(level: &str) -> Option<String> {
    let level = level.trim().to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" => Some(format!("{level},tokio_postgres=warn")),
        "warn" | "error" | "off" => Some(level),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_become_filters_that_keep_the_driver_quiet() {
        assert_eq!(
            filter_for_level("DEBUG").as_deref(),
            Some("debug,tokio_postgres=warn")
        );
        assert_eq!(filter_for_level("warn").as_deref(), Some("warn"));
        assert_eq!(filter_for_level("off").as_deref(), Some("off"));
        assert_eq!(filter_for_level("loud"), None);
        assert_eq!(filter_for_level(""), None);
        for f in ["debug,tokio_postgres=warn", "warn", "off"] {
            parse_filter(f).unwrap();
        }
    }

    #[test]
    fn filters_are_parsed_strictly() {
        parse_filter("info,readtier::access=info").unwrap();
        parse_filter("warn,readtier[member_miss]=debug").unwrap();
        for bad in ["info,readtier=loud", "=info", "readtier=info=debug"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_install_the_filter_cannot_be_changed() {
        // The unit tests never install the process subscriber.
        assert!(current_filter().is_none());
        assert!(matches!(
            set_filter("debug"),
            Err(LoggingError::NotInstalled)
        ));
        assert!(matches!(
            set_filter("info,x=loud"),
            Err(LoggingError::Filter { .. })
        ));
    }
}
