//! `switchboard.v1.Admin`: the live classifier, validated hot swaps and rollbacks, durable
//! feedback, and retraining, over the registry (`live`), the records and the retrainer
//! (`train::retrain`). Served on its own address behind an admin bearer token.
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::status::IntoStatus;
use crate::error::{Error, ErrorKind};
use crate::live::fleet::{ReplicaState, Rollout};
use crate::live::registry::{Registry, Source, SwapOptions, SwapReport};
use crate::live::{rfc3339, LiveModel};
use crate::proto::v1 as pb;
use crate::proto::v1::admin_server::Admin;
use crate::quota::Quotas;
use crate::records::shared::SharedRecords;
use crate::records::{now_ms, DecisionLog, FeedbackLog, FeedbackRecord};
use crate::train::retrain::{RetrainParams, Retrainer};

/// Shortest admin token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// An interceptor admitting only `authorization: Bearer <token>`. Both sides are trimmed (a
/// token read from a file or an env var often ends in a newline) and compared as sha256
/// digests in constant time.
pub fn token_interceptor(
    token: &str,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let want: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    move |req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let got = crate::auth::bearer(header).ok_or_else(|| {
            Status::unauthenticated("admin: missing `authorization: Bearer <admin token>`")
        })?;
        let got: [u8; 32] = Sha256::digest(got.trim().as_bytes()).into();
        let diff = got.iter().zip(&want).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(Status::unauthenticated("admin: wrong admin token"));
        }
        Ok(req)
    }
}

/// A path from a client, canonicalised (symlinks resolved) and refused unless it lies under
/// `admin.artifact_root`. A path that does not exist gets the same answer as one outside the
/// root, so the reply says nothing about the server's files.
fn under_root(field: &str, path: &str, root: &Path) -> Result<PathBuf, Status> {
    let refused = || {
        let m = format!("{path:?} is not an existing path under admin.artifact_root");
        Error::field(ErrorKind::InvalidArgument, field, m).status()
    };
    let root = root.canonicalize().map_err(|_| refused())?;
    let p = Path::new(path).canonicalize().map_err(|_| refused())?;
    if p.starts_with(&root) {
        Ok(p)
    } else {
        Err(refused())
    }
}

/// What the Admin service works on.
pub struct AdminService {
    pub registry: Arc<Registry>,
    pub feedback: Arc<FeedbackLog>,
    pub decisions: Option<Arc<DecisionLog>>,
    pub retrainer: Arc<Retrainer>,
    /// Client-given paths (swap folders, retrain data) must lie under this folder.
    pub artifact_root: PathBuf,
    /// One retrain at a time: the running one's description while it runs.
    pub retraining: Arc<std::sync::Mutex<Option<String>>>,
    /// The quota ledger, for usage reports.
    pub quotas: Arc<Quotas>,
    /// With a fleet rollout, swaps and rollbacks go to the whole fleet through it.
    pub rollout: Option<Arc<Rollout>>,
    /// In a fleet, feedback goes to (and decisions are found in) the shared store.
    pub shared: Option<Arc<SharedRecords>>,
    /// Re-reads the config file and swaps its catalog in (`ReloadConfig`).
    pub reloader: Arc<crate::reload::Reloader>,
    /// Where the savings report reads usage records (none with the decision log off).
    pub savings: Option<crate::savings::Source>,
}

/// The retrain slot, taken for one retrain; freed when dropped (the retrain ended, or its task
/// died).
struct RetrainSlot(Arc<std::sync::Mutex<Option<String>>>);

impl RetrainSlot {
    /// Takes the slot with `what` as its description, or names the retrain holding it.
    fn take(slot: &Arc<std::sync::Mutex<Option<String>>>, what: String) -> Result<Self, String> {
        let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = g.as_ref() {
            return Err(running.clone());
        }
        *g = Some(what);
        Ok(Self(slot.clone()))
    }
}

impl Drop for RetrainSlot {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
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

fn replica_pb(r: &ReplicaState) -> pb::ReplicaClassifier {
    pb::ReplicaClassifier {
        replica: r.replica.clone(),
        generation: r.generation,
        version: r.version.clone(),
        since: rfc3339(r.since_ms),
        seen: rfc3339(r.seen_ms),
        error: r.error.clone(),
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
        if let (None, Some(d)) = (&self.shared, &self.decisions) {
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
    async fn get_savings(
        &self,
        req: Request<pb::GetSavingsRequest>,
    ) -> Result<Response<pb::SavingsReport>, Status> {
        let r = req.into_inner();
        // "Now" includes the current millisecond: a completion served a moment ago counts.
        let to = if r.to_ms == 0 {
            crate::records::now_ms() + 1
        } else {
            r.to_ms
        };
        let from = if r.from_ms == 0 {
            to.saturating_sub(86_400_000)
        } else {
            r.from_ms
        };
        if from >= to {
            let m = format!("must be before to_ms ({to}), found {from}");
            return Err(Error::field(ErrorKind::InvalidArgument, "from_ms", m).status());
        }
        let rep = crate::savings::report(self.savings.as_ref(), from, to)
            .await
            .map_err(|e| {
                let kind = match e {
                    crate::savings::ReportError::NoRecords => ErrorKind::FailedPrecondition,
                    crate::savings::ReportError::Store(_) => ErrorKind::Unavailable,
                    crate::savings::ReportError::Io(_) => ErrorKind::Internal,
                };
                Error::new(kind, e.to_string()).status()
            })?;
        let fleet_wide = matches!(self.savings, Some(crate::savings::Source::Fleet(_)));
        Ok(Response::new(crate::convert::savings_report(
            &rep, fleet_wide,
        )))
    }

    async fn reload_config(
        &self,
        _: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        use crate::reload::ReloadError;
        let r = self.reloader.reload("admin").await.map_err(|e| {
            let kind = match &e {
                ReloadError::NoFile => ErrorKind::FailedPrecondition,
                ReloadError::Invalid(_) => ErrorKind::InvalidArgument,
                ReloadError::Clients(_) => ErrorKind::Internal,
            };
            Error::new(kind, e.to_string()).status()
        })?;
        Ok(Response::new(pb::ReloadConfigResponse {
            version: r.version,
            previous: r.previous,
            changed: r.changed,
            backends: r.backends as u32,
            policies: r.policies as u32,
            restart_needed: r.restart_needed,
        }))
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let days = req.into_inner().days;
        if days > 366 {
            let m = format!("must be at most 366, found {days}");
            return Err(Error::field(ErrorKind::InvalidArgument, "days", m).status());
        }
        let days = days.max(1);
        let rows = self.quotas.usage(days).await.map_err(|e| e.status())?;
        Ok(Response::new(pb::UsageReport {
            days,
            rows: rows
                .into_iter()
                .map(|r| pb::UsageRow {
                    scope: r.scope.into(),
                    name: r.name,
                    requests: r.requests,
                    tokens: r.tokens,
                    usd: r.usd,
                })
                .collect(),
        }))
    }

    async fn get_classifier(
        &self,
        _: Request<pb::GetClassifierRequest>,
    ) -> Result<Response<pb::ClassifierInfo>, Status> {
        let (live, kept) = self.registry.versions();
        let meta = &live.classifier.meta;
        let (generation, replicas) = match &self.rollout {
            Some(r) => {
                let g = r.active().await.map_err(|e| e.status())?;
                let reps = r.replicas().await.map_err(|e| e.status())?;
                (
                    g.map_or(0, |p| p.generation),
                    reps.iter().map(replica_pb).collect(),
                )
            }
            None => (0, Vec::new()),
        };
        Ok(Response::new(pb::ClassifierInfo {
            generation,
            replicas,
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
            Some(S::Path(p)) if !p.is_empty() => {
                Source::Path(under_root("path", &p, &self.artifact_root)?)
            }
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
            skip_gate: false,
        };
        let result = match &self.rollout {
            Some(r) => r.swap(src, opt).await,
            None => self.registry.swap(src, opt).await,
        };
        self.registry.observe("swap", &result);
        result
            .map(|r| Response::new(to_pb(r)))
            .map_err(IntoStatus::status)
    }

    async fn rollback_classifier(
        &self,
        request: Request<pb::RollbackClassifierRequest>,
    ) -> Result<Response<pb::SwapClassifierResponse>, Status> {
        let version = request.into_inner().version;
        let result = match &self.rollout {
            Some(r) => r.rollback(&version).await,
            None => self.registry.rollback(&version).await,
        };
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
        if let Some(s) = &self.shared {
            let unavailable = |e: crate::fleet::StoreError| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("the fleet's shared store: {e}"),
                )
                .status()
            };
            // The local log knows this replica's decisions at once; the store, every one.
            let here = self
                .decisions
                .as_ref()
                .is_some_and(|d| d.knows(&r.decision_id));
            if !here && !s.knows(&r.decision_id).await.map_err(unavailable)? {
                let m = format!(
                    "{:?} is not among the fleet's decisions (unknown, or past retention)",
                    r.decision_id
                );
                return Err(Error::field(ErrorKind::NotFound, "decision_id", m).status());
            }
        }
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
        if let Some(s) = &self.shared {
            let sequence = s.append_feedback(&rec).await.map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("the fleet's shared store: {e}"),
                )
                .status()
            })?;
            return Ok(Response::new(pb::RecordFeedbackResponse { sequence }));
        }
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
        let data = match r.data_path.as_str() {
            "" => None,
            p => Some(under_root("data_path", p, &self.artifact_root)?),
        };
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
        let what = format!(
            "started {} on data_path {:?}",
            crate::live::rfc3339(now_ms()),
            r.data_path
        );
        let slot = RetrainSlot::take(&self.retraining, what).map_err(|running| {
            let m = format!("retrain: another retrain is running ({running}); one runs at a time");
            Error::new(ErrorKind::FailedPrecondition, m).status()
        })?;
        let retrainer = self.retrainer.clone();
        // The slot is held until the retrain ends; it stops at its next progress message
        // once the caller has gone.
        tokio::spawn(async move {
            retrainer.run(params, tx).await;
            drop(slot);
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        check: &mut impl FnMut(Request<()>) -> Result<Request<()>, Status>,
        token: &str,
    ) -> bool {
        let mut r = Request::new(());
        let v = format!("Bearer {token}").parse();
        r.metadata_mut().insert("authorization", v.unwrap());
        check(r).is_ok()
    }

    #[test]
    fn the_admin_token_is_trimmed_on_both_sides() {
        // A token read from a file or an env var often ends in a newline.
        let mut check = token_interceptor("abcdefghijklmnop\n");
        assert!(call(&mut check, "abcdefghijklmnop"));
        assert!(call(&mut check, " abcdefghijklmnop "));
        assert!(!call(&mut check, "abcdefghijklmnoq"));
        assert!(!call(&mut check, ""));
    }
}
