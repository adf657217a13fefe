//! After the first token: forward the rest of the stream, then account usage and cost and send
//! `Done`. A failure here ends the stream with an error; it never fails over (the client has
//! part of one backend's answer).
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};

use super::{Attempt, DoneInfo, Ended, Proxy, ProxyError, ProxyEvent, Served};
use crate::backends::openai::{ChatEvent, UpstreamError};
use crate::backends::Slot;
use crate::config::Backend;

/// Why a wait for the next chunk ended: the call's total time, or the idle time.
fn timed_out(b: &Backend, total: bool) -> String {
    if total {
        format!(
            "the call passed its total time of {} ms (total_timeout_ms)",
            b.total_timeout_ms
        )
    } else {
        format!("no data for {} ms (idle_timeout_ms)", b.idle_timeout_ms)
    }
}

/// The end of a stream cut by the server's shutdown, after `text` reached the client.
fn shutting_down(b: &Backend, text: &str) -> Ended {
    let error = ProxyError::ShuttingDown {
        backend: b.name.clone(),
        delivered_chars: text.chars().count(),
    };
    Ended::FailedMidStream {
        backend: b.name.clone(),
        error,
    }
}

impl Proxy {
    /// Forwards the rest of a stream whose first token is in hand.
    pub(super) async fn relay<S>(
        &self,
        at: Attempt<'_>,
        slot: Slot,
        first: String,
        mut stream: S,
    ) -> Ended
    where
        S: futures_util::Stream<Item = Result<ChatEvent, UpstreamError>> + Unpin,
    {
        let (b, tx) = (at.backend, at.tx);
        let mut text = first.clone();
        let mut chunks = 1;
        let serving = ProxyEvent::Serving {
            backend: b.name.clone(),
            model: b.model.clone(),
        };
        if tx.send(Ok(serving)).await.is_err()
            || tx.send(Ok(ProxyEvent::Delta(first))).await.is_err()
        {
            return Ended::ClientGone; // dropping `stream` closes the upstream request
        }
        let mut tail = Vec::new();
        let idle = Duration::from_millis(b.idle_timeout_ms);
        let max_text = self.engine.config().server.max_completion_bytes;
        let mut closing = self.closing.clone();
        loop {
            // Watch the client too: a cancelled client drops the upstream at once, not at
            // the upstream's next chunk. Every wait is bounded by the idle and total timeouts.
            let until = (Instant::now() + idle).min(at.deadline);
            let item = tokio::select! {
                biased;
                _ = tx.closed() => return Ended::ClientGone,
                _ = closing.wait_for(|c| *c).map(|_| ()) => {
                    self.upstreams.finish(slot, true, Some(at.ttft), None);
                    return shutting_down(b, &text);
                }
                item = tokio::time::timeout_at(until.into(), stream.next()) => item,
            };
            let failure = match item {
                Err(_) => Some(timed_out(b, until == at.deadline)),
                Ok(None) => break,
                Ok(Some(Ok(ChatEvent::Delta(t)))) if text.len() + t.len() > max_text => Some(
                    format!("the completion passed {max_text} bytes (server.max_completion_bytes)"),
                ),
                Ok(Some(Ok(ChatEvent::Delta(t)))) => {
                    text.push_str(&t);
                    chunks += 1;
                    if tx.send(Ok(ProxyEvent::Delta(t))).await.is_err() {
                        return Ended::ClientGone;
                    }
                    None
                }
                Ok(Some(Ok(other))) => {
                    tail.push(other);
                    None
                }
                Ok(Some(Err(e))) => {
                    tracing::info!(backend = %b.name, error = %e, "upstream failed mid-stream");
                    Some(e.public())
                }
            };
            if let Some(error) = failure {
                self.upstreams.finish(slot, false, Some(at.ttft), None);
                let error = ProxyError::MidStream {
                    backend: b.name.clone(),
                    delivered_chunks: chunks,
                    delivered_chars: text.chars().count(),
                    error,
                };
                return Ended::FailedMidStream {
                    backend: b.name.clone(),
                    error,
                };
            }
        }
        self.upstreams.finish(slot, true, Some(at.ttft), None);
        self.done(&at, text, tail).await
    }

    /// Usage (reported, or estimated with the encoder's tokenizer), cost, metrics and `Done`.
    pub(super) async fn done(
        &self,
        at: &Attempt<'_>,
        text: String,
        events: Vec<ChatEvent>,
    ) -> Ended {
        let b = at.backend;
        let mut finish = "stop".to_string();
        let mut usage = None;
        for e in events {
            match e {
                ChatEvent::Finish(f) => finish = f,
                ChatEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                } => usage = Some((prompt_tokens, completion_tokens)),
                ChatEvent::Delta(_) => {}
            }
        }
        let (prompt_tokens, completion_tokens, estimated) = match usage {
            Some((p, c)) => (p, c, false),
            None => {
                let (p, c) = self.estimate_usage(at, &text);
                (p, c, true)
            }
        };
        let cost_usd = crate::policy::cost_usd(b, prompt_tokens, completion_tokens);
        let m = &self.engine.metrics;
        m.tokens
            .with_label_values(&[b.name.as_str(), "prompt"])
            .inc_by(prompt_tokens as u64);
        m.tokens
            .with_label_values(&[b.name.as_str(), "completion"])
            .inc_by(completion_tokens as u64);
        m.cost_usd
            .with_label_values(&[b.name.as_str()])
            .inc_by(cost_usd);
        let done = DoneInfo {
            finish_reason: finish,
            prompt_tokens,
            completion_tokens,
            estimated,
            cost_usd,
            backend: b.name.clone(),
            model: b.model.clone(),
            ttft_us: at.ttft.as_micros() as u64,
            total_us: at.started.elapsed().as_micros() as u64,
            attempts: at.attempts.clone(),
        };
        let served = Served {
            backend: b.name.clone(),
            prompt_tokens,
            completion_tokens,
            cost_usd,
        };
        if let Some(f) = at.on_served {
            f(&served);
        }
        at.span.record("gen_ai.response.model", b.model.as_str());
        at.span.record("gen_ai.usage.input_tokens", prompt_tokens);
        at.span
            .record("gen_ai.usage.output_tokens", completion_tokens);
        at.span.record(
            "gen_ai.response.finish_reasons",
            done.finish_reason.as_str(),
        );
        let _ = at.tx.send(Ok(ProxyEvent::Done(Box::new(done)))).await;
        Ended::Served(served)
    }

    /// Token counts with the encoder's tokenizer, for an upstream that reports no usage.
    fn estimate_usage(&self, at: &Attempt<'_>, text: &str) -> (u32, u32) {
        let tok = self.engine.embedder.tokenizer();
        let r = &at.input.route;
        let prompt = if r.messages.is_empty() {
            r.prompt.clone()
        } else {
            r.messages
                .iter()
                .map(|(_, c)| c.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        (
            tok.count_tokens(&prompt) as u32,
            tok.count_tokens(text).saturating_sub(2) as u32,
        )
    }
}
