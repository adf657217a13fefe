//! After the first token: forward the rest of the stream, then account usage and cost and send
//! `Done`. A failure here ends the stream with an error; it never fails over (the client has
//! part of one backend's answer).
use futures_util::StreamExt;

use super::{Attempt, DoneInfo, Ended, Proxy, ProxyError, ProxyEvent};
use crate::backends::openai::{ChatEvent, UpstreamError};
use crate::backends::Slot;

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
        loop {
            // Watch the client too: a cancelled client drops the upstream at once, not at
            // the upstream's next chunk.
            let item = tokio::select! {
                biased;
                _ = tx.closed() => return Ended::ClientGone,
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            match item {
                Ok(ChatEvent::Delta(t)) => {
                    text.push_str(&t);
                    chunks += 1;
                    if tx.send(Ok(ProxyEvent::Delta(t))).await.is_err() {
                        return Ended::ClientGone;
                    }
                }
                Ok(other) => tail.push(other),
                Err(e) => {
                    self.upstreams.finish(slot, false, Some(at.ttft), None);
                    let error = ProxyError::MidStream {
                        backend: b.name.clone(),
                        delivered_chunks: chunks,
                        delivered_chars: text.chars().count(),
                        error: e.to_string(),
                    };
                    return Ended::FailedMidStream {
                        backend: b.name.clone(),
                        error,
                    };
                }
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
        let _ = at.tx.send(Ok(ProxyEvent::Done(Box::new(done)))).await;
        Ended::Served {
            backend: b.name.clone(),
        }
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
