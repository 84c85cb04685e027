//! OpenTelemetry traces, exported over OTLP (http/protobuf) when the
//! standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, the default; gRPC is not built in), `OTEL_SERVICE_NAME`
//! (default `agentd`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, and `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048).
//! Without an endpoint nothing is installed and the spans below are
//! disabled callsites (no cost beyond a branch).
//!
//! Spans are ordinary `tracing` spans with target [`TARGET`], turned into
//! OpenTelemetry spans by `tracing-opentelemetry`; the log output never
//! shows them (its filter turns the target off). One trace per task: the
//! supervisor opens the `task` span when it hands the task to a child and
//! ends it when the task ends; its W3C `traceparent` crosses to the child
//! in `ToChild::Task`, where the child's `invoke_agent` span, model calls
//! (`chat`, GenAI semantic conventions), tool calls (`execute_tool`) and
//! sandbox runs join it. Each process exports its own spans.
//!
//! Nothing waits for the collector: finished spans go to a bounded queue
//! ([`bounded`]) drained by the SDK's export thread; when the queue is full
//! a span is dropped and counted in [`take_dropped`]
//! (`agentd_trace_spans_dropped_total`).
//!
//! Prompt and completion text are not exported unless [`CAPTURE_CONTENT`]
//! is `true`.

mod bounded;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span meant for export.
pub const TARGET: &str = "agentd_trace";

/// Spans dropped since last taken (the queue was full).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped since the last call (each drop is counted once).
pub fn take_dropped() -> u64 {
    DROPPED.swap(0, Ordering::Relaxed)
}

/// The installed exporter; dropping it flushes what is queued (bounded by
/// the export timeout) and stops the export thread. Drop it outside any
/// async runtime: the blocking HTTP client owns one of its own.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!("trace exporter shutdown: {e}");
        }
    }
}

/// Why traces are not exported although the variables ask for it.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL={0:?} is not supported; agentd exports traces over http/protobuf only (set it to http/protobuf or unset it)"
    )]
    Protocol(String),
    #[error("OTEL_BSP_MAX_QUEUE_SIZE={0:?} is not a positive whole number")]
    QueueSize(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
}

/// Whether the environment names an endpoint (so [`from_env`] would
/// start an exporter), without starting anything.
pub fn configured() -> bool {
    let set = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// The exporter and the `tracing` layer feeding it, when the environment
/// names an endpoint; `Ok(None)` when it does not.
pub fn from_env() -> Result<Option<(Traces, OtelLayer)>, TracesError> {
    let set = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if !configured() {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
        return Err(TracesError::Protocol(p));
    }
    let queue = match set("OTEL_BSP_MAX_QUEUE_SIZE") {
        None => bounded::DEFAULT_QUEUE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(TracesError::QueueSize(v))?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TracesError::Build(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("agentd");
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(bounded::processor(exporter, queue, &DROPPED))
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("agentd"));
    Ok(Some((Traces { provider }, Box::new(layer))))
}

/// The layer `logging::init` adds beside the log output.
pub type OtelLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The opt-in to export prompt and completion text (and tool arguments and
/// results) on model and tool spans, named as OpenTelemetry's GenAI
/// instrumentations name it. Off unless set to `true`.
pub const CAPTURE_CONTENT: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// Whether [`CAPTURE_CONTENT`] says to export message text.
pub fn capture_content() -> bool {
    std::env::var(CAPTURE_CONTENT).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The W3C `traceparent` of `span`, when it is exported (None otherwise).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span `traceparent` names (a span of
/// the supervisor, in another process). A malformed value is ignored: the
/// span then starts a trace of its own.
pub fn join(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    if span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!("cannot join the task's trace: {e}");
    }
}
