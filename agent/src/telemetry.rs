//! Logging and tracing of the agent: a `fmt` subscriber on stderr, plus
//! OpenTelemetry export over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (standard `OTEL_*` variables apply).
//!
//! The hub sends the W3C trace context of each desired state; the first
//! apply of a bundle it carried continues that trace.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
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

fn otlp_provider(default_service: &str) -> Option<SdkTracerProvider> {
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

/// Installs the subscriber (`RUST_LOG`, default `info`) and, when
/// configured, OpenTelemetry export. Keep the guard until the process ends.
pub fn init() -> TelemetryGuard {
    let service = "flotilla-agent";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = otlp_provider(service);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(otel)
        .try_init()
        .is_ok();
    TelemetryGuard {
        provider: provider.filter(|_| installed),
    }
}

fn pending() -> &'static Mutex<HashMap<String, HashMap<String, String>>> {
    static PENDING: OnceLock<Mutex<HashMap<String, HashMap<String, String>>>> = OnceLock::new();
    PENDING.get_or_init(Mutex::default)
}

/// Remembers the trace context of a desired state for the applications
/// whose bundles it carried.
pub fn remember<'a>(
    apps: impl IntoIterator<Item = &'a str>,
    trace_context: &HashMap<String, String>,
) {
    if trace_context.is_empty() {
        return;
    }
    let mut p = pending()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for app in apps {
        p.insert(app.to_owned(), trace_context.clone());
    }
}

/// Makes the remembered trace context of `app` (taken: used once) the
/// parent of `span`.
pub fn adopt_parent(span: &tracing::Span, app: &str) {
    let carrier = pending()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(app);
    let Some(carrier) = carrier else { return };
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
