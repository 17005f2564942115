//! Chat guardrails per API key: a request rate limit (token bucket, per process) and a daily
//! model-token cap (counted in the state store, so it holds across restarts and instances).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::ports::{StateStore, StoreError};

/// Requests per minute per key; a burst up to the whole minute's allowance.
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s allowance, or says how many seconds until one is free.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter");
        let (tokens, last) = buckets
            .entry(key.to_string())
            .or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) * 60.0 / self.per_minute).ceil() as u64)
        }
    }
}

fn usage_key(key_id: &str) -> String {
    crate::state_keys::chat_usage_key(key_id, chrono::Utc::now().date_naive())
}

/// Model tokens `key_id` has used today.
pub async fn tokens_today(state: &dyn StateStore, key_id: &str) -> Result<i64, StoreError> {
    Ok(state
        .counters(&usage_key(key_id))
        .await?
        .get("tokens")
        .copied()
        .unwrap_or(0))
}

pub async fn add_tokens(
    state: &dyn StateStore,
    key_id: &str,
    tokens: u64,
) -> Result<(), StoreError> {
    if tokens > 0 {
        state
            .add(&usage_key(key_id), "tokens", tokens as i64)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_limited_per_key() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limiter.check("b").is_ok(), "keys are limited separately");
    }
}
