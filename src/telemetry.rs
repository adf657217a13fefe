//! OpenTelemetry traces. Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then the request spans (`route` with
//! `embed`, `classify` and `rank` below it, and one `upstream` span per attempt with the GenAI
//! attributes) are exported over OTLP/HTTP in batches. A caller's W3C `traceparent` (gRPC
//! metadata or HTTP header) becomes the parent of the request's span, and each upstream call
//! carries the `traceparent` of its attempt's span. The exporter sends with the server's own
//! reqwest on its tokio runtime, so the tree keeps one HTTP client stack and one tonic.

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The environment variables that turn export on.
pub const ENDPOINT_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Largest response body read back from the collector.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Sets the W3C trace-context propagator process-wide (what `extract` and `inject` use).
pub fn use_w3c_propagation() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
}

/// Whether the environment asks for export.
pub fn export_requested() -> bool {
    ENDPOINT_VARS
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// The OTLP/HTTP exporter's provider, named by `OTEL_SERVICE_NAME` (default "switchboard").
/// Call inside the tokio runtime that will carry the exports. Keep the provider and call
/// `shutdown` on it before exit, so the last batch is sent.
pub fn otlp_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let client = TokioClient {
        http: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default(),
        runtime: tokio::runtime::Handle::current(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(std::time::Duration::from_secs(10))
        .with_http_client(client)
        .build()?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "switchboard".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The tracing layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("switchboard"))
}

/// Makes the caller's trace (read through `get`, e.g. gRPC metadata or HTTP headers) the
/// parent of `span`; no-op without a `traceparent` or without OpenTelemetry.
pub fn adopt_parent(span: &tracing::Span, get: &dyn Fn(&str) -> Option<String>) {
    let carrier: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| get(k).map(|v| (k.to_string(), v)))
        .collect();
    if carrier.is_empty() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

/// Adds the current span's `traceparent` (and `tracestate`) to an upstream request's headers.
pub fn inject(headers: &mut reqwest::header::HeaderMap) {
    struct Headers<'a>(&'a mut reqwest::header::HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(key.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) {
                self.0.insert(k, v);
            }
        }
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Headers(headers))
    });
}

/// The exporter's HTTP client: the server's reqwest, run on its tokio runtime (the batch
/// processor calls from a thread of its own, outside any runtime).
#[derive(Debug, Clone)]
struct TokioClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for TokioClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let req = reqwest::Request::try_from(request)?;
        let task = self.runtime.spawn(async move {
            let resp = http.execute(req).await?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let body = bounded_body(resp).await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        task.await?
    }
}

async fn bounded_body(
    mut resp: reqwest::Response,
) -> Result<bytes::Bytes, opentelemetry_http::HttpError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("the collector's response is over 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// Keeps the provider of an installed exporter; flushes and stops it when dropped.
pub struct Guard(pub Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}
