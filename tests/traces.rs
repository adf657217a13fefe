//! OpenTelemetry traces of one routed streaming completion, exported to an in-memory
//! exporter: the request, route, embed, classify, rank and upstream spans all belong to the
//! caller's trace (its `traceparent`), the upstream span carries the GenAI attributes, and the
//! mock upstream received a `traceparent` naming that span. Its own test binary: it installs
//! the process-wide tracing subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use switchboard::proto::v1::complete_event::Event;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{CompleteRequest, DoneEvent, RouteDecisionRequest};
use switchboard_mock::Mock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_completion_is_one_trace_under_the_callers_trace_id() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    switchboard::telemetry::use_w3c_propagation();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let mock = Mock::start().await.unwrap();
    let cfg = common::catalog(vec![common::mock_backend(
        "mocked",
        "mock",
        &mock.base_url(),
        0.8,
    )]);
    let server = common::TestServer::start(cfg).await;
    let done = complete_with_traceparent(&server).await;
    server.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let trace = TraceId::from_hex(TRACE).unwrap();
    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    for name in [
        "complete",
        "route",
        "embed",
        "classify",
        "rank",
        "chat mock",
    ] {
        let found = named(name);
        assert!(
            !found.is_empty(),
            "no {name} span in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        for s in found {
            assert_eq!(
                s.span_context.trace_id(),
                trace,
                "{name} is outside the caller's trace"
            );
        }
    }
    let complete = named("complete")[0];
    assert_eq!(
        complete.parent_span_id,
        SpanId::from_hex(CALLER_SPAN).unwrap()
    );

    let upstream = named("chat mock")[0];
    assert_eq!(
        attr(upstream, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        attr(upstream, "gen_ai.request.model").as_deref(),
        Some("mock")
    );
    let usage = done.usage.unwrap();
    let input = usage.prompt_tokens.to_string();
    let output = usage.completion_tokens.to_string();
    assert_eq!(attr(upstream, "gen_ai.usage.input_tokens"), Some(input));
    assert_eq!(attr(upstream, "gen_ai.usage.output_tokens"), Some(output));
    assert_eq!(
        attr(upstream, "gen_ai.response.finish_reasons").as_deref(),
        Some("stop")
    );

    mock_saw(&mock, upstream);
}

/// One streaming completion whose request carries the caller's `traceparent`.
async fn complete_with_traceparent(server: &common::TestServer) -> DoneEvent {
    let mut req = tonic::Request::new(CompleteRequest {
        route: Some(RouteDecisionRequest {
            prompt: "Write a haiku about tracing".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    req.metadata_mut()
        .insert("traceparent", parent.parse().unwrap());
    let mut c = RouterClient::new(server.channel.clone());
    let mut s = c.complete(req).await.unwrap().into_inner();
    let mut done = None;
    while let Some(ev) = s.message().await.unwrap() {
        if let Some(Event::Done(d)) = ev.event {
            done = Some(d);
        }
    }
    done.expect("the completion ends with Done")
}

/// The mock saw the upstream span's context: same trace, that span as the parent.
fn mock_saw(mock: &Mock, upstream: &SpanData) {
    let seen = mock.counters.last_traceparent.lock().unwrap().clone();
    let seen = seen.expect("the upstream request carried traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], TRACE, "{seen}");
    assert_eq!(
        parts[2],
        upstream.span_context.span_id().to_string(),
        "{seen}"
    );
}
