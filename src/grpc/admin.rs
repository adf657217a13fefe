//! `switchboard.v1.Admin`: the live classifier, validated hot swaps and rollbacks, durable
//! feedback, and retraining, over the registry (`live`), the records and the retrainer
//! (`train::retrain`). Served on its own address behind an admin bearer token.
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::status::IntoStatus;
use crate::error::{Error, ErrorKind};
use crate::live::registry::{Registry, Source, SwapOptions, SwapReport};
use crate::live::LiveModel;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_server::Admin;
use crate::records::{now_ms, DecisionLog, FeedbackLog, FeedbackRecord};
use crate::train::retrain::{RetrainParams, Retrainer};

/// An interceptor admitting only `authorization: Bearer <token>` (compared by sha256).
pub fn token_interceptor(
    token: &str,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let want: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    move |req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let got = crate::auth::bearer(header).ok_or_else(|| {
            Status::unauthenticated("admin: missing `authorization: Bearer <admin token>`")
        })?;
        let got: [u8; 32] = Sha256::digest(got.as_bytes()).into();
        if got != want {
            return Err(Status::unauthenticated("admin: wrong admin token"));
        }
        Ok(req)
    }
}

/// What the Admin service works on.
pub struct AdminService {
    pub registry: Arc<Registry>,
    pub feedback: Arc<FeedbackLog>,
    pub decisions: Option<Arc<DecisionLog>>,
    pub retrainer: Arc<Retrainer>,
}

fn to_pb(r: SwapReport) -> pb::SwapClassifierResponse {
    pb::SwapClassifierResponse {
        swapped: r.swapped,
        previous_version: r.previous,
        version: r.version,
        messages: r.messages,
        metrics: r.metrics.into_iter().collect(),
    }
}

fn version_pb(k: &LiveModel) -> pb::ClassifierVersion {
    pb::ClassifierVersion {
        version: k.version().to_string(),
        source: k.source.clone(),
        loaded_at: k.loaded_at.clone(),
    }
}

impl AdminService {
    fn check_feedback(&self, r: &pb::RecordFeedbackRequest) -> Result<(), Status> {
        let invalid =
            |f: &str, m: String| Err(Error::field(ErrorKind::InvalidArgument, f, m).status());
        if r.decision_id.is_empty() {
            return invalid("decision_id", "required".into());
        }
        if let Some(d) = &self.decisions {
            if !d.knows(&r.decision_id) {
                return Err(Error::field(
                    ErrorKind::NotFound,
                    "decision_id",
                    format!(
                        "{:?} is not in the decision log (unknown, or past retention)",
                        r.decision_id
                    ),
                )
                .status());
            }
        }
        let live = self.registry.live();
        let c = &live.classifier;
        for (field, value, labels) in [
            ("intent", &r.intent, &c.meta.intent_labels),
            ("domain", &r.domain, &c.meta.domain_labels),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !labels.contains(v)) {
                return invalid(field, format!("unknown label {v:?}; known: {labels:?}"));
            }
        }
        if let Some(x) = r.complexity.filter(|x| !(0.0..=1.0).contains(x)) {
            return invalid("complexity", format!("must be in [0, 1], found {x}"));
        }
        if !["", "success", "failure"].contains(&r.outcome.as_str()) {
            return invalid(
                "outcome",
                format!("{:?}: expected success, failure or empty", r.outcome),
            );
        }
        if r.rating > 5 {
            return invalid(
                "rating",
                format!("{}: expected 1-5, or 0 for none", r.rating),
            );
        }
        if r.intent.is_none()
            && r.domain.is_none()
            && r.complexity.is_none()
            && r.outcome.is_empty()
            && r.rating == 0
        {
            return invalid(
                "intent",
                "nothing to record: give a correction, an outcome or a rating".into(),
            );
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_classifier(
        &self,
        _: Request<pb::GetClassifierRequest>,
    ) -> Result<Response<pb::ClassifierInfo>, Status> {
        let (live, kept) = self.registry.versions();
        let meta = &live.classifier.meta;
        Ok(Response::new(pb::ClassifierInfo {
            live: Some(version_pb(&live)),
            intent_labels: meta.intent_labels.clone(),
            domain_labels: meta.domain_labels.clone(),
            metrics: meta.metrics.clone().into_iter().collect(),
            kept: kept.iter().rev().map(|k| version_pb(k)).collect(),
            encoder: format!(
                "{} (sha256 {})",
                live.encoder.info().name,
                live.encoder.info().weights_sha256
            ),
        }))
    }

    async fn swap_classifier(
        &self,
        request: Request<pb::SwapClassifierRequest>,
    ) -> Result<Response<pb::SwapClassifierResponse>, Status> {
        use pb::swap_classifier_request::Source as S;
        let r = request.into_inner();
        let src = match r.source {
            Some(S::Path(p)) if !p.is_empty() => Source::Path(p.into()),
            Some(S::InlineHeads(b)) => Source::Inline(b),
            _ => {
                let e = Error::field(
                    ErrorKind::InvalidArgument,
                    "source",
                    "give `path` or `inline_heads`",
                );
                return Err(e.status());
            }
        };
        let opt = SwapOptions {
            expected_version: r.expected_version,
            dry_run: r.dry_run,
            force: r.force,
        };
        let result = self.registry.swap(src, opt).await;
        self.registry.observe("swap", &result);
        result
            .map(|r| Response::new(to_pb(r)))
            .map_err(IntoStatus::status)
    }

    async fn rollback_classifier(
        &self,
        request: Request<pb::RollbackClassifierRequest>,
    ) -> Result<Response<pb::SwapClassifierResponse>, Status> {
        let result = self.registry.rollback(&request.into_inner().version).await;
        self.registry.observe("rollback", &result);
        result
            .map(|r| Response::new(to_pb(r)))
            .map_err(IntoStatus::status)
    }

    async fn record_feedback(
        &self,
        request: Request<pb::RecordFeedbackRequest>,
    ) -> Result<Response<pb::RecordFeedbackResponse>, Status> {
        let r = request.into_inner();
        self.check_feedback(&r)?;
        let rec = FeedbackRecord {
            sequence: 0,
            ts_ms: now_ms(),
            decision_id: r.decision_id,
            intent: r.intent,
            domain: r.domain,
            complexity: r.complexity,
            outcome: r.outcome,
            rating: r.rating,
            comment: r.comment,
        };
        let log = self.feedback.clone();
        let sequence = tokio::task::spawn_blocking(move || log.append(rec))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()).status())?
            .map_err(|e| {
                let path = self.feedback.path().display();
                Error::new(ErrorKind::Unavailable, format!("feedback log {path}: {e}")).status()
            })?;
        Ok(Response::new(pb::RecordFeedbackResponse { sequence }))
    }

    type RetrainStream = Pin<Box<dyn Stream<Item = Result<pb::RetrainProgress, Status>> + Send>>;

    async fn retrain(
        &self,
        request: Request<pb::RetrainRequest>,
    ) -> Result<Response<Self::RetrainStream>, Status> {
        use tokio_stream::StreamExt;
        let r = request.into_inner();
        let data = (!r.data_path.is_empty()).then(|| std::path::PathBuf::from(&r.data_path));
        if let Some(d) = data.as_ref().filter(|d| !d.is_file()) {
            let e = Error::field(
                ErrorKind::InvalidArgument,
                "data_path",
                format!("{} is not a file", d.display()),
            );
            return Err(e.status());
        }
        let params = RetrainParams {
            data,
            include_feedback: r.include_feedback,
            promote_if_better: r.promote_if_better,
            seed: r.seed,
            max_epochs: if r.max_epochs == 0 {
                20
            } else {
                r.max_epochs as usize
            },
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(self.retrainer.clone().run(params, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| match item {
            Ok(p) => Ok(pb::RetrainProgress {
                epoch: p.epoch,
                train_loss: p.train_loss,
                dev_loss: p.dev_loss,
                dev_metrics: p.dev_metrics.into_iter().collect(),
                message: p.message,
                output_path: p.output_path,
                promoted: p.promoted,
                version: p.version,
            }),
            Err(e) => Err(e.status()),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
