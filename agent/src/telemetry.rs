//! Logging and, when `[tracing] otlp_endpoint` is set, OpenTelemetry traces of the RPCs.
//!
//! One tracing subscriber: the log (stderr, filtered by RUST_LOG or `log_level`) and an optional OpenTelemetry
//! layer that turns crius' own info-level spans (one `rpc` span per CRI call, the streaming sessions) into OTLP
//! spans, batched by the SDK's export thread and sent over gRPC (tonic) to the collector. An RPC's span is named
//! after its method and carries the gRPC status; the log's spans are unchanged when tracing is off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogLevel, TracingConfig};

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether spans go anywhere but the log (then RPC spans get their OpenTelemetry name and status).
static EXPORTING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot install the log subscriber")]
    Subscriber(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the subscriber. Must run inside the tokio runtime: the gRPC exporter's connection lives there.
pub fn init(level: LogLevel, tracing: &TracingConfig) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.to_string()));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = match tracing.otlp_endpoint.as_str() {
        "" => None,
        endpoint => Some(provider(endpoint)?),
    };
    // Only crius' own spans, whatever the log level: not the exporter's (it would trace its own exports).
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("crius"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("crius", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(log)
        .with(otel)
        .try_init()
        .map_err(TelemetryError::Subscriber)?;
    if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = %tracing.otlp_endpoint, "exporting RPC traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("crius")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Flushes buffered spans to the collector (bounded by the export timeout), off the async threads.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "cannot flush the last traces to the OTLP collector");
        }
    }
}

/// The span of one RPC, `rpc{method, <ids>}`, with the OpenTelemetry fields declared but empty: the log shows
/// them only when traces are exported.
macro_rules! rpc_span {
    ($method:expr, $($ids:tt)+) => {
        tracing::info_span!(
            "rpc",
            method = $method,
            $($ids)+,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        )
    };
}
pub(crate) use rpc_span;

/// Names an RPC's span after its method (before it is first entered: OpenTelemetry fixes the name then).
pub fn name_rpc_span(span: &tracing::Span, method: &'static str) {
    if EXPORTING.load(Ordering::Relaxed) {
        span.record("otel.name", method);
        span.record("otel.kind", "server");
    }
}

/// Records an RPC's outcome on its span. As OpenTelemetry's gRPC conventions say for a server, only codes that
/// mean the server failed mark the span as an error; a refused request (NotFound, InvalidArgument...) does not.
pub fn end_rpc_span(span: &tracing::Span, status: Option<&tonic::Status>) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let code = status.map_or(tonic::Code::Ok, |s| s.code());
    span.record("rpc.grpc.status_code", code as i32);
    if let Some(s) = status
        && matches!(
            code,
            tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::Unavailable
                | tonic::Code::DataLoss
        )
    {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", s.message());
    }
}
