//! `switchboard.v1.Router`: reads the caller, converts the proto messages and calls the
//! gateway. Routing logic lives in `engine` and `gateway`; this file must not grow any.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::status::IntoStatus;
use crate::auth::Caller;
use crate::convert::{to_complete_input, to_event, to_response, to_route_request};
use crate::gateway::{ended_without_answer, CompletionRx, Gateway};
use crate::proto::v1 as pb;
use crate::proto::v1::router_server::Router;
use crate::proxy::ProxyEvent;

pub struct RouterService {
    gateway: Arc<Gateway>,
}

impl RouterService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// Counts a call by method and the gRPC code it ended (or started its stream) with.
    fn count(&self, method: &str, err: Option<&crate::error::Error>) {
        let code = match err {
            None => tonic::Code::Ok,
            Some(e) => super::status::code(e.kind),
        };
        self.gateway
            .engine()
            .metrics
            .grpc_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route_decision(
        &self,
        request: Request<pb::RouteDecisionRequest>,
    ) -> Result<Response<pb::RouteDecisionResponse>, Status> {
        let span = tracing::info_span!(
            "route_decision",
            decision_id = tracing::field::Empty,
            intent = tracing::field::Empty
        );
        crate::telemetry::adopt_parent(&span, &|k| metadata(&request, k));
        async move {
            let caller = request.extensions().get::<Caller>().cloned();
            let req = to_route_request(request.into_inner());
            let out = self.gateway.route(req, caller.as_ref()).await;
            self.count("RouteDecision", out.as_ref().err());
            match out {
                Ok(o) => {
                    let span = tracing::Span::current();
                    span.record("decision_id", o.decision_id.as_str());
                    span.record("intent", o.prediction.intent.as_str());
                    Ok(Response::new(to_response(&o)))
                }
                Err(e) => {
                    tracing::info!(error = %e, "route_decision refused");
                    Err(e.status())
                }
            }
        }
        .instrument(span)
        .await
    }

    type CompleteStream = Pin<Box<dyn Stream<Item = Result<pb::CompleteEvent, Status>> + Send>>;

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<Self::CompleteStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let parent = |k: &str| metadata(&request, k);
        let span = tracing::info_span!("complete", pinned = tracing::field::Empty);
        crate::telemetry::adopt_parent(&span, &parent);
        let input = to_complete_input(request.into_inner());
        span.record("pinned", input.pinned.as_deref().unwrap_or(""));
        // The producer stops (and drops the upstream request) once the client is gone.
        let rx = span.in_scope(|| self.gateway.complete(input, caller.as_ref()));
        self.count("Complete", rx.as_ref().err());
        let rx = rx.map_err(IntoStatus::status)?;
        Ok(Response::new(Box::pin(events(rx))))
    }
}

/// A metadata value as text (trace context headers).
fn metadata<T>(r: &Request<T>, key: &str) -> Option<String> {
    r.metadata().get(key)?.to_str().ok().map(str::to_string)
}

/// The completion's events as proto events. The stream always ends with `Done` or an error: if
/// the events stop without either (the completion's task died), it ends with an INTERNAL status
/// rather than a silent OK.
fn events(rx: CompletionRx) -> impl Stream<Item = Result<pb::CompleteEvent, Status>> + Send {
    futures_util::stream::unfold((rx, false), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let item = match rx.recv().await {
                Some(Ok(e @ ProxyEvent::Done(_))) => (to_event(e).map(Ok), true),
                Some(Ok(e)) => (to_event(e).map(Ok), false),
                Some(Err(e)) => (Some(Err(e.status())), true),
                None => (Some(Err(ended_without_answer().status())), true),
            };
            if let (Some(out), last) = item {
                return Some((out, (rx, last)));
            }
        }
    })
}
