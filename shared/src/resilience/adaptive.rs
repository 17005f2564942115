//! The adaptive concurrency limit of one model endpoint: how many calls may be in flight at
//! once, found by measuring rather than configured. A fixed number is wrong both ways — too
//! low for a hosted API that takes hundreds of calls a minute, too high for one local Ollama —
//! so the limit grows while calls succeed at flat latency and shrinks when the provider pushes
//! back, in the spirit of Netflix's concurrency-limits (AIMD with a latency gradient):
//!
//! - **growth**: while at least half the limit is in use, each success adds 1 (slow start:
//!   the limit doubles every round trip) until the first back-off, then 1/limit (one more per
//!   round trip);
//! - **back-off**: a 429, 5xx or timeout multiplies the limit by 0.8; latency rising above twice
//!   its baseline and by more than 50 ms (the provider queues our calls; a few milliseconds
//!   more on a fast endpoint is our own busy process) by the ratio, between 0.5 and 0.9. Only calls
//!   started after the last back-off can cause another, so one burst of 429s counts once; while
//!   a pushed-back call waits to retry, the limit does not grow;
//! - **bounds**: never below 1 nor above the ceiling (`LLM_MAX_CONCURRENCY`), never more in
//!   flight than the provider's `x-ratelimit-remaining-requests`, and no call starts before a
//!   `Retry-After` or an exhausted request/token budget's reset has passed.
//!
//! Latency is tracked per kind of call (a streamed answer is slower than a tagging call by
//! nature, not because the provider struggles). Waiters are served first come, first served
//! (a FIFO semaphore), so tagging, embeddings and chat share the endpoint fairly.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// What a call does, for its own latency baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Tag,
    Answer,
    Rewrite,
    Embed,
}

const KINDS: usize = 4;

impl CallKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// Where the limit starts: low enough for one local model, and slow start reaches 32 in three
/// round trips.
pub const INITIAL_LIMIT: usize = 4;
/// Latency above this multiple of its baseline means the provider queues our calls…
const LATENCY_TOLERANCE: f64 = 2.0;
/// …when it is also this much above it (seconds): a call answered in 1 ms and then in 4 ms
/// says our own process was busy, not that the provider queues (a fast local server or a
/// cache-like endpoint would otherwise hold the limit at its floor).
const LATENCY_SLACK: f64 = 0.05;
const OVERLOAD_BACKOFF: f64 = 0.8;
/// Weight of a new sample in the recent latency (about the last five calls).
const RECENT_WEIGHT: f64 = 0.2;
/// How fast the baseline follows a provider that really became slower (about 100 calls).
const BASELINE_DRIFT: f64 = 0.01;
/// Samples of a kind before its latency can shrink the limit.
const WARM_UP_SAMPLES: u32 = 3;
/// A Retry-After longer than this is not waited for by everyone (the breaker handles outages).
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// How long a `remaining-requests` cap holds when no reset time came with it.
const DEFAULT_CAP_VALIDITY: Duration = Duration::from_secs(60);

/// How a call ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Succeeded after this long.
    Success(Duration),
    /// 429, 5xx, timeout: the provider is at its limit.
    Overload,
    /// Failed for a reason that says nothing about capacity (a refusal, a bad reply).
    Ignore,
}

/// What an OpenAI-style server said about its rate limits in one response.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    pub retry_after: Option<Duration>,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub reset_tokens: Option<Duration>,
}

impl RateHeaders {
    /// Reads `Retry-After` (seconds) and `x-ratelimit-{remaining,reset}-{requests,tokens}`;
    /// values that do not parse are ignored, as if absent.
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> RateHeaders {
        let number = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
        RateHeaders {
            retry_after: get("retry-after")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
            remaining_requests: number("x-ratelimit-remaining-requests"),
            remaining_tokens: number("x-ratelimit-remaining-tokens"),
            reset_requests: get("x-ratelimit-reset-requests").and_then(parse_reset),
            reset_tokens: get("x-ratelimit-reset-tokens").and_then(parse_reset),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RateHeaders::default()
    }
}

/// OpenAI's reset durations: `"1s"`, `"6m0s"`, `"20ms"`, `"1h2m3.5s"`, or plain seconds.
fn parse_reset(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let mut total = 0.0;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|i| *i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += value * unit;
        rest = &rest[len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    baseline: f64,
    recent: f64,
    samples: u32,
}

impl Latency {
    /// Adds a sample; returns how far latency rose above its baseline (recent / baseline) when
    /// it rose beyond the tolerance.
    fn observe(&mut self, seconds: f64) -> Option<f64> {
        if self.samples == 0 {
            self.baseline = seconds;
            self.recent = seconds;
        } else {
            self.recent += RECENT_WEIGHT * (seconds - self.recent);
            if self.recent < self.baseline {
                self.baseline = self.recent;
            } else {
                self.baseline += BASELINE_DRIFT * (self.recent - self.baseline);
            }
        }
        self.samples = self.samples.saturating_add(1);
        let ratio = self.recent / self.baseline.max(1e-6);
        (self.samples > WARM_UP_SAMPLES
            && ratio > LATENCY_TOLERANCE
            && self.recent - self.baseline > LATENCY_SLACK)
            .then_some(ratio)
    }
}

/// The limit's arithmetic, apart from waiting, so it can be tested step by step.
#[derive(Debug)]
struct State {
    limit: f64,
    ceiling: f64,
    slow_start: bool,
    /// Bumped by every back-off; a call remembers the epoch it started in.
    epoch: u64,
    latency: [Latency; KINDS],
    /// No call starts before this.
    paused_until: Option<Instant>,
    /// At most this many in flight, until then (`x-ratelimit-remaining-requests`).
    header_cap: Option<(usize, Instant)>,
    in_flight: usize,
    /// Of those, calls waiting to retry after push-back (not at the provider now).
    retrying: usize,
    /// Permits the semaphore holds in total (in flight plus available), i.e. the target the
    /// last adjustment set.
    granted: usize,
}

impl State {
    fn new(ceiling: usize) -> State {
        let ceiling = ceiling.max(1);
        State {
            limit: INITIAL_LIMIT.min(ceiling) as f64,
            ceiling: ceiling as f64,
            slow_start: true,
            epoch: 0,
            latency: [Latency::default(); KINDS],
            paused_until: None,
            header_cap: None,
            in_flight: 0,
            retrying: 0,
            granted: INITIAL_LIMIT.min(ceiling),
        }
    }

    /// How many calls may be in flight now.
    fn target(&self, now: Instant) -> usize {
        let mut t = self.limit.floor().max(1.0) as usize;
        if let Some((cap, until)) = self.header_cap
            && now < until
        {
            t = t.min(cap.max(1));
        }
        t
    }

    fn back_off(&mut self, factor: f64, started_in: u64) {
        if started_in != self.epoch {
            return;
        }
        self.limit = (self.limit * factor).max(1.0);
        self.slow_start = false;
        self.epoch += 1;
    }

    fn finish(&mut self, kind: CallKind, started_in: u64, outcome: Outcome) {
        match outcome {
            Outcome::Overload => self.back_off(OVERLOAD_BACKOFF, started_in),
            Outcome::Ignore => {}
            Outcome::Success(took) => {
                if let Some(ratio) = self.latency[kind.index()].observe(took.as_secs_f64()) {
                    self.back_off((LATENCY_TOLERANCE / ratio).clamp(0.5, 0.9), started_in);
                } else if self.retrying == 0 && self.in_flight as f64 * 2.0 >= self.limit {
                    let step = if self.slow_start {
                        1.0
                    } else {
                        1.0 / self.limit
                    };
                    self.limit = (self.limit + step).min(self.ceiling);
                }
            }
        }
    }

    fn observe_headers(&mut self, h: &RateHeaders, now: Instant) {
        let mut pause = h.retry_after;
        if h.remaining_requests == Some(0) {
            pause = pause.max(Some(h.reset_requests.unwrap_or(Duration::from_secs(1))));
        }
        if h.remaining_tokens == Some(0) {
            pause = pause.max(Some(h.reset_tokens.unwrap_or(Duration::from_secs(1))));
        }
        if let Some(p) = pause {
            let until = now + p.min(MAX_PAUSE);
            self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        }
        if let Some(r) = h.remaining_requests {
            let until = now + h.reset_requests.unwrap_or(DEFAULT_CAP_VALIDITY);
            self.header_cap = Some((usize::try_from(r).unwrap_or(usize::MAX), until));
        }
    }
}

/// One endpoint's adaptive limit, shared by every call to it in the process.
pub struct AdaptiveLimit {
    name: String,
    permits: Semaphore,
    state: Mutex<State>,
    /// Woken when a call ends or the limit moves: retries waiting for room look again.
    room: tokio::sync::Notify,
}

/// A call's place under the limit. Dropping it gives the place back; a call that was cancelled
/// (a chat client gone) counts as saying nothing about capacity.
pub struct Slot<'a> {
    limit: &'a AdaptiveLimit,
    permit: Option<SemaphorePermit<'a>>,
    kind: CallKind,
    epoch: u64,
    started: Instant,
    outcome: Outcome,
}

impl Slot<'_> {
    /// Gives the place back with how the call went; a success's latency is measured from the
    /// moment the call got its place.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = match outcome {
            Outcome::Success(_) => Outcome::Success(self.started.elapsed()),
            other => other,
        };
    }

    /// The back-off epoch the call started in, for [`AdaptiveLimit::overloaded`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.limit.state.lock().expect("limit state");
        s.finish(self.kind, self.epoch, self.outcome);
        s.in_flight -= 1;
        drop(self.permit.take());
        self.limit.adjust(&mut s);
        self.limit.room.notify_waiters();
    }
}

/// A call counted as waiting to retry for as long as it waits, also when it is cancelled
/// there (a chat client gone): a count left behind would stop growth for good.
struct Retrying<'a>(&'a AdaptiveLimit);

impl<'a> Retrying<'a> {
    fn start(limit: &'a AdaptiveLimit) -> Retrying<'a> {
        limit.state.lock().expect("limit state").retrying += 1;
        Retrying(limit)
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("limit state").retrying -= 1;
    }
}

impl AdaptiveLimit {
    /// `name` labels the metrics (e.g. `openai/gpt-4o-mini`); `ceiling` is `LLM_MAX_CONCURRENCY`.
    pub fn new(name: impl Into<String>, ceiling: usize) -> AdaptiveLimit {
        let state = State::new(ceiling);
        let limit = AdaptiveLimit {
            name: name.into(),
            permits: Semaphore::new(state.granted),
            state: Mutex::new(state),
            room: tokio::sync::Notify::new(),
        };
        limit.publish(&limit.state.lock().expect("limit state"));
        limit
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of calls allowed in flight now.
    pub fn current(&self) -> usize {
        self.state
            .lock()
            .expect("limit state")
            .target(Instant::now())
    }

    pub fn in_flight(&self) -> usize {
        self.state.lock().expect("limit state").in_flight
    }

    /// Waits for a place (first come, first served) and for any pause the provider asked for.
    pub async fn acquire(&self, kind: CallKind) -> Slot<'_> {
        loop {
            let paused = self.state.lock().expect("limit state").paused_until;
            if let Some(until) = paused
                && Instant::now() < until
            {
                tokio::time::sleep_until(until).await;
            }
            let permit = self.permits.acquire().await.expect("limit semaphore open");
            let mut s = self.state.lock().expect("limit state");
            // A pause that began while we waited for the permit: wait for it again, in line.
            if s.paused_until.is_some_and(|u| Instant::now() < u) {
                drop(s);
                drop(permit);
                continue;
            }
            s.in_flight += 1;
            self.publish(&s);
            return Slot {
                limit: self,
                permit: Some(permit),
                kind,
                epoch: s.epoch,
                started: Instant::now(),
                outcome: Outcome::Ignore,
            };
        }
    }

    /// A call that holds a place and was pushed back (a 429, 5xx or timeout its client
    /// retries): waits out `delay`, then until the calls at the provider are fewer than the
    /// limit that push-back lowered. A retry holding its place would otherwise go out at once
    /// whatever the limit says, and a burst of retries keeps the provider above its capacity.
    /// Calls waiting here do not count as at the provider, so they cannot all wait on each
    /// other; and while any waits, the limit does not grow: probing above the level that was
    /// just refused is what would refuse the retry again, until a call runs out of attempts.
    /// Returns the back-off epoch the retry goes out in: push-back to the retry is news, not
    /// the push-back already counted.
    pub async fn retry_after(&self, delay: Duration) -> u64 {
        let _retrying = Retrying::start(self);
        tokio::time::sleep(delay).await;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.state.lock().expect("limit state");
                // Saturating: a cancelled call may give its place back before it stops counting as
                // retrying.
                let at_provider = s.in_flight.saturating_sub(s.retrying);
                if at_provider < s.target(Instant::now()) {
                    return s.epoch;
                }
            }
            notified.await;
        }
    }

    /// Reports the provider's push-back in the middle of a call (a 429 its client retries).
    pub fn overloaded(&self, started_in: u64) {
        let mut s = self.state.lock().expect("limit state");
        s.back_off(OVERLOAD_BACKOFF, started_in);
        self.adjust(&mut s);
    }

    /// Takes in the rate-limit headers of a response.
    pub fn observe_headers(&self, headers: &RateHeaders) {
        if headers.is_empty() {
            return;
        }
        let mut s = self.state.lock().expect("limit state");
        s.observe_headers(headers, Instant::now());
        self.adjust(&mut s);
    }

    /// Brings the semaphore's permits to the target: new ones added, surplus ones withdrawn
    /// as they come back (never taken from a running call).
    fn adjust(&self, s: &mut State) {
        let target = s.target(Instant::now());
        if target > s.granted {
            self.permits.add_permits(target - s.granted);
            s.granted = target;
        } else if target < s.granted {
            let withdrawn = self.permits.forget_permits(s.granted - target);
            s.granted -= withdrawn;
        }
        self.room.notify_waiters();
        self.publish(s);
    }

    fn publish(&self, s: &State) {
        metrics::gauge!(crate::metrics::MODEL_CONCURRENCY_LIMIT, "endpoint" => self.name.clone())
            .set(s.target(Instant::now()) as f64);
        metrics::gauge!(crate::metrics::MODEL_IN_FLIGHT, "endpoint" => self.name.clone())
            .set(s.in_flight as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Outcome {
        Outcome::Success(Duration::from_millis(ms))
    }

    /// One round trip of a burst at the limit: every call in flight ends, and each is replaced
    /// at once by a waiting one (so the limit stays fully used).
    fn round_trip(s: &mut State, outcome: Outcome) {
        let n = s.target(Instant::now());
        s.in_flight = n;
        let epoch = s.epoch;
        for _ in 0..n {
            s.finish(CallKind::Tag, epoch, outcome);
        }
    }

    #[test]
    fn the_limit_doubles_per_round_trip_while_latency_is_flat_up_to_the_ceiling() {
        let mut s = State::new(64);
        assert_eq!(s.target(Instant::now()), INITIAL_LIMIT);
        let mut seen = vec![];
        for _ in 0..6 {
            round_trip(&mut s, ok(500));
            seen.push(s.target(Instant::now()));
        }
        assert_eq!(seen[..3], [8, 16, 32], "slow start doubles");
        assert_eq!(s.target(Instant::now()), 64, "and stops at the ceiling");
    }

    #[test]
    fn the_limit_does_not_grow_while_a_pushed_back_call_waits_to_retry() {
        let mut s = State::new(64);
        round_trip(&mut s, Outcome::Overload);
        let lowered = s.target(Instant::now());
        s.retrying = 1;
        for _ in 0..5 {
            round_trip(&mut s, ok(10));
        }
        assert_eq!(
            s.target(Instant::now()),
            lowered,
            "probing above what was refused would refuse the retry again"
        );
        s.retrying = 0;
        round_trip(&mut s, ok(10));
        assert!(s.target(Instant::now()) > lowered, "growth resumes after");
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let mut s = State::new(64);
        for _ in 0..100 {
            s.in_flight = 1;
            s.finish(CallKind::Tag, s.epoch, ok(500));
            s.in_flight = 0;
        }
        assert_eq!(
            s.target(Instant::now()),
            INITIAL_LIMIT,
            "one call at a time says nothing about more"
        );
    }

    #[test]
    fn a_429_backs_off_once_per_round_trip_then_growth_is_additive() {
        let mut s = State::new(64);
        for _ in 0..3 {
            round_trip(&mut s, ok(500));
        }
        assert_eq!(s.target(Instant::now()), 32);
        // Every call of the round trip is refused: one back-off, not 32.
        round_trip(&mut s, Outcome::Overload);
        assert_eq!(s.target(Instant::now()), 25, "32 × 0.8");
        // Growth after a back-off: about one per round trip.
        round_trip(&mut s, ok(500));
        assert_eq!(s.target(Instant::now()), 26);
        round_trip(&mut s, ok(500));
        assert_eq!(s.target(Instant::now()), 27);
        // Calls that started before the last back-off cannot cause another.
        let old = s.epoch;
        for _ in 0..20 {
            s.finish(CallKind::Tag, old, Outcome::Overload);
        }
        assert_eq!(s.target(Instant::now()), 22, "27.5 × 0.8, once");
        let mut floor = State::new(64);
        for _ in 0..50 {
            floor.finish(CallKind::Tag, floor.epoch, Outcome::Overload);
        }
        assert_eq!(floor.target(Instant::now()), 1, "never below one");
    }

    #[test]
    fn rising_latency_shrinks_the_limit_and_each_kind_has_its_own_baseline() {
        let mut s = State::new(64);
        for _ in 0..4 {
            round_trip(&mut s, ok(2000));
        }
        let grown = s.target(Instant::now());
        assert_eq!(grown, 64);
        // Answers stream for 8 s by nature: their own baseline, so no back-off.
        for _ in 0..10 {
            s.in_flight = 40;
            s.finish(CallKind::Answer, s.epoch, ok(8000));
        }
        assert_eq!(s.target(Instant::now()), 64);
        // The provider starts queueing tagging calls: latency climbs to 4× its baseline.
        let mut shrunk = 64;
        for ms in [3000, 4000, 6000, 8000, 8000, 8000] {
            s.in_flight = 40;
            s.finish(CallKind::Tag, s.epoch, ok(ms));
            shrunk = s.target(Instant::now());
        }
        assert!(shrunk < 40, "latency backs off: {shrunk}");
        assert!(!s.slow_start);
    }

    #[test]
    fn jitter_of_a_few_milliseconds_on_a_fast_endpoint_is_not_queueing() {
        let mut s = State::new(64);
        for _ in 0..4 {
            round_trip(&mut s, ok(1));
        }
        assert_eq!(s.target(Instant::now()), 64);
        // Our own busy process: 1 ms calls take 4–12 ms for a while.
        for ms in [4, 8, 12, 12, 12, 12, 12, 12] {
            round_trip(&mut s, ok(ms));
        }
        assert_eq!(s.target(Instant::now()), 64, "no back-off for 11 ms");
        // A real queue on the same endpoint still counts: 1 ms → 300 ms.
        for _ in 0..6 {
            round_trip(&mut s, ok(300));
        }
        assert!(s.target(Instant::now()) < 64);
    }

    #[test]
    fn headers_cap_the_limit_and_pause_until_the_reset() {
        let now = Instant::now();
        let mut s = State::new(64);
        for _ in 0..4 {
            round_trip(&mut s, ok(100));
        }
        s.observe_headers(
            &RateHeaders {
                remaining_requests: Some(5),
                reset_requests: Some(Duration::from_secs(2)),
                ..Default::default()
            },
            now,
        );
        assert_eq!(s.target(now), 5, "never above what remains");
        assert_eq!(
            s.target(now + Duration::from_secs(3)),
            64,
            "the cap ends at the reset"
        );
        s.observe_headers(
            &RateHeaders {
                remaining_tokens: Some(0),
                reset_tokens: Some(Duration::from_millis(1500)),
                ..Default::default()
            },
            now,
        );
        assert_eq!(s.paused_until, Some(now + Duration::from_millis(1500)));
        s.observe_headers(
            &RateHeaders {
                retry_after: Some(Duration::from_secs(600)),
                ..Default::default()
            },
            now,
        );
        assert_eq!(s.paused_until, Some(now + MAX_PAUSE), "capped");
    }

    #[test]
    fn rate_headers_parse_as_openai_sends_them() {
        let headers = [
            ("retry-after", "2"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ];
        let h = RateHeaders::parse(|n| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(h.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(h.remaining_requests, Some(59));
        assert_eq!(h.remaining_tokens, Some(149_984));
        assert_eq!(h.reset_requests, Some(Duration::from_secs(1)));
        assert_eq!(h.reset_tokens, Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_reset("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
        let junk = RateHeaders::parse(|_| Some("-1"));
        assert!(junk.is_empty(), "unparseable values count as absent");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_after_a_429_wait_until_the_lowered_limit_has_room() {
        let limit = std::sync::Arc::new(AdaptiveLimit::new("test", 8));
        let slots: Vec<_> =
            futures::future::join_all((0..4).map(|_| limit.acquire(CallKind::Tag))).await;
        // All four are refused: one back-off, 4 → 3.
        limit.overloaded(slots[0].epoch());
        assert_eq!(limit.current(), 3);
        // All four wait to retry: three go (the limit), the fourth waits for one to end.
        let retries: Vec<_> = (0..4)
            .map(|_| {
                let l = limit.clone();
                tokio::spawn(async move { l.retry_after(Duration::ZERO).await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(retries.iter().filter(|r| r.is_finished()).count(), 3);
        let mut slots = slots.into_iter();
        slots
            .next()
            .unwrap()
            .finish(Outcome::Success(Duration::ZERO));
        for r in retries {
            r.await.unwrap();
        }
        drop(slots);
        assert_eq!(limit.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_places_as_the_limit_grows_and_a_pause_holds_everyone() {
        let limit = std::sync::Arc::new(AdaptiveLimit::new("test", 8));
        let slots: Vec<_> =
            futures::future::join_all((0..4).map(|_| limit.acquire(CallKind::Tag))).await;
        assert_eq!(limit.in_flight(), 4);
        // A fifth waits until a place frees or the limit grows.
        let fifth = tokio::spawn({
            let l = limit.clone();
            async move {
                let s = l.acquire(CallKind::Embed).await;
                s.finish(Outcome::Success(Duration::ZERO));
            }
        });
        tokio::task::yield_now().await;
        assert!(!fifth.is_finished());
        for s in slots {
            s.finish(Outcome::Success(Duration::ZERO));
        }
        fifth.await.unwrap();
        // 4 of 4 in use → 5, 3 of 5 → 6; 2 or 1 of 6 is under half: no growth.
        assert_eq!(limit.current(), 6);
        assert_eq!(limit.in_flight(), 0);
        limit.observe_headers(&RateHeaders {
            retry_after: Some(Duration::from_secs(5)),
            ..Default::default()
        });
        let started = Instant::now();
        let s = limit.acquire(CallKind::Tag).await;
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "waits out Retry-After"
        );
        limit.overloaded(s.epoch());
        assert_eq!(limit.current(), 4, "6 × 0.8");
        s.finish(Outcome::Overload);
        assert_eq!(limit.current(), 4, "the same call counts once");
        let cancelled = limit.acquire(CallKind::Answer).await;
        drop(cancelled);
        assert_eq!(limit.in_flight(), 0, "a dropped place is given back");
    }
}
