//! Logging and tracing of the agent (see `flotilla-telemetry`).
//!
//! The hub sends the W3C trace context of each desired state; the first
//! apply of a bundle it carried continues that trace.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub use flotilla_telemetry::{LogFormat, TelemetryGuard};

/// Installs logging and, when configured, OpenTelemetry export with the
/// default service name `flotilla-agent`; identical lines repeated within a
/// minute are summed up (see [`crate::log_limit`]). Keep the guard until
/// the process ends.
pub fn init() -> TelemetryGuard {
    init_with(LogFormat::Text)
}

/// [`init`] with logs written in `format`.
pub fn init_with(format: LogFormat) -> TelemetryGuard {
    flotilla_telemetry::init_layered(
        "flotilla-agent",
        format,
        crate::log_limit::RepeatLimit::new(crate::log_limit::WINDOW),
    )
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
    if let Some(carrier) = carrier {
        flotilla_telemetry::set_parent(span, &carrier);
    }
}
