//! Logging and tracing of the hub (see `flotilla-telemetry`).
//!
//! The W3C trace context of the span that computed a cluster's desired
//! state travels to the agent in `DesiredState.trace_context`.

use std::collections::HashMap;

pub use flotilla_telemetry::{
    LogFormat, TelemetryGuard, otlp_provider, set_parent, trace_context_of,
};

/// Installs logging and, when configured, OpenTelemetry export with the
/// default service name `flotilla-hub`. Keep the guard until the process
/// ends.
pub fn init() -> TelemetryGuard {
    init_with(LogFormat::Text)
}

/// [`init`] with logs written in `format`.
pub fn init_with(format: LogFormat) -> TelemetryGuard {
    flotilla_telemetry::init_with("flotilla-hub", format)
}

/// The W3C trace context (`traceparent`, `tracestate`) of the current span;
/// empty when it is not exported.
pub fn current_trace_context() -> HashMap<String, String> {
    trace_context_of(&tracing::Span::current())
}
