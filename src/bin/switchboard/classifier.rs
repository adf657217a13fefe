//! `switchboard classifier …` and `switchboard usage`: the operator's client for the Admin
//! service. Part of the binary,
//! not the library: printing the answers is its job.
use anyhow::Context;
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::cli::ClassifierOp;

pub fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    Ok(switchboard::grpc::with_bearer(msg, token)?)
}

fn print_swap(r: &pb::SwapClassifierResponse) {
    let state = if r.swapped { "swapped" } else { "not swapped" };
    println!("{state}: {} → {}", r.previous_version, r.version);
    for m in &r.messages {
        println!("  {m}");
    }
}

pub async fn connect(addr: &str) -> anyhow::Result<AdminClient<Channel>> {
    let channel = Channel::from_shared(addr.to_string())?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to the Admin service at {addr}"))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 << 20))
}

/// `switchboard usage`: the usage report as a table (or JSON).
pub async fn usage(addr: &str, token: &str, days: u32, json: bool) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    let r = c
        .get_usage(authed(pb::GetUsageRequest { days }, token)?)
        .await?
        .into_inner();
    if json {
        let rows: Vec<_> = r
            .rows
            .iter()
            .map(|x| {
                serde_json::json!({"scope": x.scope, "name": x.name, "requests": x.requests,
                    "tokens": x.tokens, "usd": x.usd})
            })
            .collect();
        println!("{}", serde_json::json!({"days": r.days, "rows": rows}));
        return Ok(());
    }
    println!("usage over the last {} UTC day(s)", r.days);
    println!(
        "{:<8} {:<28} {:>10} {:>12} {:>14}",
        "scope", "name", "requests", "tokens", "usd"
    );
    for x in &r.rows {
        println!(
            "{:<8} {:<28} {:>10} {:>12} {:>14.6}",
            x.scope, x.name, x.requests, x.tokens, x.usd
        );
    }
    Ok(())
}

pub async fn run(addr: &str, token: &str, op: ClassifierOp) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    match op {
        ClassifierOp::Status => {
            let req = authed(pb::GetClassifierRequest {}, token)?;
            print_status(c.get_classifier(req).await?.into_inner());
        }
        ClassifierOp::Swap {
            path,
            inline,
            expected_version,
            dry_run,
            force,
        } => {
            use pb::swap_classifier_request::Source;
            let source = if inline {
                let bytes = switchboard::classify::artifact::pack_inline(&path)?;
                Source::InlineHeads(bytes)
            } else {
                Source::Path(path.display().to_string())
            };
            let req = pb::SwapClassifierRequest {
                source: Some(source),
                expected_version,
                dry_run,
                force,
            };
            print_swap(&c.swap_classifier(authed(req, token)?).await?.into_inner());
        }
        ClassifierOp::Rollback { version } => {
            let req = pb::RollbackClassifierRequest { version };
            print_swap(
                &c.rollback_classifier(authed(req, token)?)
                    .await?
                    .into_inner(),
            );
        }
        ClassifierOp::Retrain {
            data,
            no_feedback,
            promote,
            max_epochs,
            seed,
        } => {
            let req = pb::RetrainRequest {
                data_path: data.map(|d| d.display().to_string()).unwrap_or_default(),
                include_feedback: !no_feedback,
                promote_if_better: promote,
                seed,
                max_epochs,
            };
            let mut s = c.retrain(authed(req, token)?).await?.into_inner();
            while let Some(p) = s.message().await? {
                if p.epoch > 0 {
                    println!(
                        "epoch {:>3}  train loss {:.4}  dev loss {:.4}",
                        p.epoch, p.train_loss, p.dev_loss
                    );
                }
                if !p.message.is_empty() {
                    println!("{}", p.message);
                }
                if !p.version.is_empty() {
                    println!("version {}  promoted {}", p.version, p.promoted);
                }
            }
        }
    }
    Ok(())
}

fn print_status(i: pb::ClassifierInfo) {
    let live = i.live.unwrap_or_default();
    println!(
        "live     {}  from {}  at {}",
        live.version, live.source, live.loaded_at
    );
    println!("encoder  {}", i.encoder);
    println!("intents  {}", i.intent_labels.join(", "));
    println!("domains  {}", i.domain_labels.join(", "));
    let mut metrics: Vec<_> = i.metrics.into_iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in metrics {
        println!("  {k:<28} {v:.4}");
    }
    for k in i.kept {
        println!(
            "kept     {}  from {}  at {}",
            k.version, k.source, k.loaded_at
        );
    }
    if i.generation > 0 || !i.replicas.is_empty() {
        println!("fleet    generation {}", i.generation);
    }
    for r in i.replicas {
        let state = if r.error.is_empty() {
            "ok".to_string()
        } else {
            format!("error: {}", r.error)
        };
        println!(
            "replica  {:<24} generation {:<4} {}  since {}  seen {}  {state}",
            r.replica, r.generation, r.version, r.since, r.seen
        );
    }
}
