//! Logging and tracing for the hub and the agent: a `fmt` subscriber on
//! stderr filtered by `RUST_LOG`, as text (ANSI colours only when stderr is
//! a terminal and `NO_COLOR` is not set) or as one JSON object per line
//! ([`LogFormat`]), plus OpenTelemetry export over OTLP/gRPC
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*`
//! variables apply: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_BSP_SCHEDULE_DELAY`, ...).
//!
//! A trace crosses the wire as a W3C trace context (`traceparent`,
//! `tracestate`) in a string map: [`trace_context_of`] writes one,
//! [`set_parent`] continues it.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and stops the OpenTelemetry exporter when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still buffered and stops the exporter, without
    /// blocking the runtime (the exporter needs it to send).
    pub async fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Dropped without `shutdown` (an error path): flush on another
        // thread rather than block a runtime thread the export needs.
        if let Some(p) = self.provider.take() {
            std::thread::spawn(move || {
                let _ = p.shutdown();
            });
        }
    }
}

/// Builds an OTLP/gRPC tracer provider from the environment, or `None` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is not set or
/// `OTEL_SDK_DISABLED=true`. Must run inside a Tokio runtime.
pub fn otlp_provider(default_service: &str) -> Option<SdkTracerProvider> {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    if !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OpenTelemetry export disabled: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(default_service.to_owned());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line for log pipelines: `timestamp` (RFC 3339),
    /// `level`, `target`, `message` and the event's fields at the top
    /// level, `span` and `spans` for the spans it happened in.
    Json,
}

/// Whether text logs on stderr get ANSI colours: only on a terminal, and
/// not when `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn stderr_colours() -> bool {
    colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Installs the subscriber with text logs (see [`init_with`]).
pub fn init(service: &str) -> TelemetryGuard {
    init_with(service, LogFormat::Text)
}

/// Installs the subscriber: `fmt` on stderr in `format`, filtered by
/// `RUST_LOG` (default `info`) and, when configured, OpenTelemetry export
/// with `service` as the default service name. Keep the guard until the
/// process ends. Safe to call more than once; later calls do nothing.
pub fn init_with(service: &str, format: LogFormat) -> TelemetryGuard {
    init_layered(service, format, tracing_subscriber::layer::Identity::new())
}

/// [`init_with`] with `first` as the innermost layer: it sees every event
/// the filter lets through and can drop it for every output (e.g. to
/// rate-limit repeated lines).
pub fn init_layered<L>(service: &str, format: LogFormat, first: L) -> TelemetryGuard
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = otlp_provider(service);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_owned())));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(stderr_colours()).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(first)
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    TelemetryGuard {
        provider: provider.filter(|_| installed),
    }
}

/// The W3C trace context of `span`; empty when it is not exported.
pub fn trace_context_of(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut map);
    }
    map
}

/// Makes the trace context in `carrier` the parent of `span` (nothing when
/// it is empty or invalid).
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(!colours(false, None), "a pipe or a file");
        assert!(!colours(true, Some(OsStr::new("1"))), "NO_COLOR=1");
        assert!(colours(true, Some(OsStr::new(""))), "NO_COLOR empty");
    }

    #[test]
    fn a_context_round_trips_and_garbage_is_ignored() {
        // No exporter installed: spans carry no valid context.
        let span = tracing::info_span!("t");
        assert!(trace_context_of(&span).is_empty());
        set_parent(&span, &HashMap::new());
        let garbage = HashMap::from([("traceparent".to_owned(), "not a context".to_owned())]);
        set_parent(&span, &garbage);
        assert!(trace_context_of(&span).is_empty());
    }
}
