//! `switchboard.v1.Router`. At this stage only the encoder is wired; the classifier and the
//! ranking policy fill in RouteDecision, the proxy fills in Complete.
use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::embed::Embedder;
use crate::proto::v1::{
    router_server::Router, CompleteEvent, CompleteRequest, RouteDecisionRequest,
    RouteDecisionResponse,
};

pub struct RouterService {
    #[allow(dead_code)] // used by RouteDecision once the classifier lands
    embedder: Embedder,
}

impl RouterService {
    pub fn new(embedder: Embedder) -> Self {
        Self { embedder }
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route_decision(
        &self,
        _request: Request<RouteDecisionRequest>,
    ) -> Result<Response<RouteDecisionResponse>, Status> {
        Err(Status::unimplemented(
            "RouteDecision needs the classifier, which is not built yet",
        ))
    }

    type CompleteStream = Pin<Box<dyn Stream<Item = Result<CompleteEvent, Status>> + Send>>;

    async fn complete(
        &self,
        _request: Request<CompleteRequest>,
    ) -> Result<Response<Self::CompleteStream>, Status> {
        Err(Status::unimplemented(
            "Complete needs the proxy, which is not built yet",
        ))
    }
}
