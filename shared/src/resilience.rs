//! What keeps model calls bounded when a provider struggles, shared by every call of a
//! process: an adaptive concurrency limit per endpoint (`adaptive`: grows while calls succeed
//! at flat latency, shrinks on push-back, within `LLM_MAX_CONCURRENCY`), a client-side request
//! rate (waiting, not failing), and a circuit breaker that opens after repeated transient
//! failures, fails fast while open, and lets one probe through after a cool-down (half-open).
//! On AWS, SQS `MaximumConcurrency` stays the outer limit; this is the inner one.

mod adaptive;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

pub use adaptive::{AdaptiveLimit, CallKind, INITIAL_LIMIT, Outcome, RateHeaders};

use crate::domain::{Answer, AnswerInput, Suggestion, TagInput};
use crate::ports::{ChatModel, Embedder, ModelError, TokenSink, Usage};

/// Limits of one guard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The ceiling of the adaptive concurrency limit.
    pub max_concurrency: usize,
    /// 0: no rate limit.
    pub requests_per_minute: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else fails fast until it reports.
    HalfOpen,
}

/// How soon a call refused while a probe checks the model may come back.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(5);

pub struct Guard {
    limits: Limits,
    concurrency: Arc<AdaptiveLimit>,
    breaker: Mutex<Breaker>,
    /// When the next request may start (rate limit).
    next_slot: tokio::sync::Mutex<Instant>,
}

tokio::task_local! {
    /// The call a guard is running, so the HTTP client deep inside it can report push-back
    /// (a 429 it retries, rate headers) to the endpoint's limit as it happens.
    static CALL: CallContext;
}

struct CallContext {
    limit: Arc<AdaptiveLimit>,
    /// The back-off epoch of the call's latest attempt.
    epoch: AtomicU64,
    pushed_back: AtomicBool,
}

/// Tells the limit of the guarded call in progress that the provider pushed back (429, 5xx,
/// timeout), even if the client retries and the call ends well. Outside a guard: nothing.
pub fn report_overload() {
    let _ = CALL.try_with(|c| {
        c.pushed_back.store(true, Ordering::Relaxed);
        c.limit.overloaded(c.epoch.load(Ordering::Relaxed));
    });
}

/// Before the guarded call in progress retries after push-back: waits `delay`, then until its
/// endpoint's (lowered) limit has room for it, holding growth back meanwhile. A retry refused
/// again lowers the limit again (it went out after the first back-off), so retries cannot
/// keep meeting a limit still above the provider's capacity. Outside a guard: just the delay.
pub async fn wait_to_retry(delay: Duration) {
    match CALL.try_with(|c| c.limit.clone()) {
        Ok(limit) => {
            let epoch = limit.retry_after(delay).await;
            let _ = CALL.try_with(|c| c.epoch.store(epoch, Ordering::Relaxed));
        }
        Err(_) => tokio::time::sleep(delay).await,
    }
}

/// Hands a response's rate-limit headers to the limit of the guarded call in progress.
pub fn report_rate_headers(headers: &RateHeaders) {
    let _ = CALL.try_with(|c| c.limit.observe_headers(headers));
}

impl Guard {
    /// A guard with its own concurrency limit.
    pub fn new(limits: Limits) -> Guard {
        Guard::sharing(
            limits,
            Arc::new(AdaptiveLimit::new("model", limits.max_concurrency)),
        )
    }

    /// A guard whose calls count against `concurrency`, shared with other guards of the same
    /// endpoint.
    pub fn sharing(limits: Limits, concurrency: Arc<AdaptiveLimit>) -> Guard {
        Guard {
            limits,
            concurrency,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            next_slot: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    pub fn concurrency(&self) -> &Arc<AdaptiveLimit> {
        &self.concurrency
    }

    fn admit(&self) -> Result<(), ModelError> {
        let mut b = self.breaker.lock().expect("breaker");
        match *b {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if Instant::now() >= until => {
                *b = Breaker::HalfOpen;
                Ok(())
            }
            // Refusals are `CircuitOpen`, not failures: the caller defers its message without
            // spending one of its receives, so an outage of any length cannot dead-letter it.
            Breaker::Open { until } => Err(ModelError::CircuitOpen {
                retry_after: until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1)),
            }),
            Breaker::HalfOpen => Err(ModelError::CircuitOpen {
                retry_after: HALF_OPEN_RETRY,
            }),
        }
    }

    fn record(&self, transient_failure: bool) {
        let mut b = self.breaker.lock().expect("breaker");
        *b = match (*b, transient_failure) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::HalfOpen, true) => Breaker::Open {
                until: Instant::now() + self.limits.breaker_cooldown,
            },
            (Breaker::Closed { failures }, true)
                if failures + 1 >= self.limits.breaker_failures.max(1) =>
            {
                tracing::warn!(failures = failures + 1, "model circuit opened");
                Breaker::Open {
                    until: Instant::now() + self.limits.breaker_cooldown,
                }
            }
            (Breaker::Closed { failures }, true) => Breaker::Closed {
                failures: failures + 1,
            },
            (open, true) => open,
        };
    }

    /// Runs one model call under the guard.
    pub async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, ModelError>>,
    ) -> Result<T, ModelError> {
        self.run_as(CallKind::Tag, call).await
    }

    /// Runs one model call of `kind` under the guard: it waits for a place under the
    /// endpoint's limit, and its outcome and latency adjust that limit.
    pub async fn run_as<T>(
        &self,
        kind: CallKind,
        call: impl Future<Output = Result<T, ModelError>>,
    ) -> Result<T, ModelError> {
        self.admit()?;
        let slot = self.concurrency.acquire(kind).await;
        if self.limits.requests_per_minute > 0 {
            let spacing = Duration::from_secs(60) / self.limits.requests_per_minute;
            let start = {
                let mut next = self.next_slot.lock().await;
                let start = (*next).max(Instant::now());
                *next = start + spacing;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        let context = CallContext {
            limit: self.concurrency.clone(),
            epoch: AtomicU64::new(slot.epoch()),
            pushed_back: AtomicBool::new(false),
        };
        let (result, pushed_back) = CALL
            .scope(context, async {
                let result = call.await;
                (result, CALL.with(|c| c.pushed_back.load(Ordering::Relaxed)))
            })
            .await;
        slot.finish(match &result {
            // Its latency includes the client's waits between retries: not the provider's.
            Ok(_) if pushed_back => Outcome::Ignore,
            Ok(_) => Outcome::Success(Duration::ZERO),
            Err(e) if e.is_transient() => Outcome::Overload,
            Err(_) => Outcome::Ignore,
        });
        self.record(matches!(&result, Err(e) if e.is_transient()));
        result
    }
}

/// A chat model behind a guard.
pub struct GuardedModel {
    inner: Arc<dyn ChatModel>,
    guard: Arc<Guard>,
}

impl GuardedModel {
    pub fn new(inner: Arc<dyn ChatModel>, guard: Arc<Guard>) -> GuardedModel {
        GuardedModel { inner, guard }
    }
}

#[async_trait]
impl ChatModel for GuardedModel {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn judges_passages(&self) -> bool {
        self.inner.judges_passages()
    }

    async fn suggest(&self, input: &TagInput) -> Result<(Suggestion, Usage), ModelError> {
        self.guard.run(self.inner.suggest(input)).await
    }

    async fn answer(&self, input: &AnswerInput) -> Result<(Answer, Usage), ModelError> {
        self.guard
            .run_as(CallKind::Answer, self.inner.answer(input))
            .await
    }

    async fn answer_streaming(
        &self,
        input: &AnswerInput,
        tokens: &TokenSink,
    ) -> Result<(Answer, Usage), ModelError> {
        self.guard
            .run_as(CallKind::Answer, self.inner.answer_streaming(input, tokens))
            .await
    }

    async fn standalone(
        &self,
        history: &[(String, String)],
        question: &str,
    ) -> Result<(String, Usage), ModelError> {
        self.guard
            .run_as(CallKind::Rewrite, self.inner.standalone(history, question))
            .await
    }
}

/// An embedder behind a guard.
pub struct GuardedEmbedder {
    inner: Arc<dyn Embedder>,
    guard: Arc<Guard>,
}

impl GuardedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, guard: Arc<Guard>) -> GuardedEmbedder {
        GuardedEmbedder { inner, guard }
    }
}

#[async_trait]
impl Embedder for GuardedEmbedder {
    fn space(&self) -> &str {
        self.inner.space()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        self.guard
            .run_as(CallKind::Embed, self.inner.embed(texts))
            .await
    }

    async fn embed_query(&self, text: &str) -> Result<(Vec<f32>, Usage), ModelError> {
        self.guard.run(self.inner.embed_query(text)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_concurrency: 2,
            requests_per_minute: 0,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(30),
        }
    }

    async fn fail(guard: &Guard, calls: &AtomicUsize) -> Result<(), ModelError> {
        guard
            .run(async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(ModelError::Unavailable("down".into()))
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_fails_fast_and_recovers_through_one_probe() {
        let guard = Guard::new(limits());
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            assert!(fail(&guard, &calls).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let fast = fail(&guard, &calls).await.unwrap_err();
        assert!(fast.to_string().contains("circuit open") && fast.is_transient());
        assert!(
            matches!(fast, ModelError::CircuitOpen { retry_after } if retry_after <= Duration::from_secs(30)),
            "a refusal says when to come back: {fast:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no call while open");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(fail(&guard, &calls).await.is_err(), "the probe fails");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(
            fail(&guard, &calls)
                .await
                .unwrap_err()
                .to_string()
                .contains("circuit open"),
            "open again"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            guard.run(async { Ok::<_, ModelError>(7) }).await.unwrap(),
            7,
            "the probe succeeds"
        );
        assert!(
            guard.run(async { Ok::<_, ModelError>(8) }).await.is_ok(),
            "closed again"
        );
        let refused = guard
            .run(async { Err::<(), _>(ModelError::Refused("400".into())) })
            .await;
        assert!(refused.is_err());
        assert!(
            matches!(
                *guard.breaker.lock().unwrap(),
                Breaker::Closed { failures: 0 }
            ),
            "refusals are not outages"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_to_the_rate_and_bounded_in_number() {
        let guard = Arc::new(Guard::new(Limits {
            requests_per_minute: 60,
            ..limits()
        }));
        let started = Instant::now();
        for _ in 0..3 {
            guard.run(async { Ok::<_, ModelError>(()) }).await.unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "60 a minute: one a second"
        );
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let unlimited = Arc::new(Guard::new(limits()));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (g, n, p) = (unlimited.clone(), in_flight.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                g.run(async {
                    let now = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ModelError>(())
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            peak.load(Ordering::SeqCst),
            2,
            "at most max_concurrency at once"
        );
    }
}
