//! What model calls cost: list prices per 1M input and output tokens, built in for the models
//! this project offers and overridable by `MODEL_PRICES`, turned into dollars per call.
//!
//! The cost is computed where the tokens are counted (`models`), so every tagging call,
//! embedding batch and chat answer carries it in its `Usage`; local models (Ollama, the
//! offline lexical models) cost nothing. A model with no known price costs 0 and is named in
//! one warning, so a missing price is seen rather than silently billed as free.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

use crate::ports::Usage;

/// Dollars per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    const fn new(input: f64, output: f64) -> Price {
        Price { input, output }
    }

    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// List prices in USD per 1M tokens (standard, on-demand tier; no batch or cached-input
/// discounts, which this project does not use). A model id matches the longest entry it
/// starts with, so dated snapshots (`gpt-4o-mini-2024-07-18`) and Bedrock version suffixes
/// (`…-v1:0`) find their family.
///
/// OpenAI, as listed on platform.openai.com/docs/pricing (checked 2026-12-01 through
/// tokenmath.io's "checked Jun 21, 2026" copy and aumiqx.com's April 2026 table).
const OPENAI: &[(&str, Price)] = &[
    ("gpt-4o", Price::new(2.50, 10.00)),
    ("gpt-4o-mini", Price::new(0.15, 0.60)),
    ("gpt-4.1", Price::new(2.00, 8.00)),
    ("gpt-4.1-mini", Price::new(0.40, 1.60)),
    ("gpt-4.1-nano", Price::new(0.10, 0.40)),
    ("o3-mini", Price::new(1.10, 4.40)),
    ("o4-mini", Price::new(1.10, 4.40)),
    ("text-embedding-3-small", Price::new(0.02, 0.0)),
    ("text-embedding-3-large", Price::new(0.13, 0.0)),
    ("text-embedding-ada-002", Price::new(0.10, 0.0)),
];

/// Amazon Bedrock on-demand, us-east-1, as listed on aws.amazon.com/bedrock/pricing
/// (checked 2026-12-01; the Claude 4.5 figures also in clauder-navi.com's 2026 summary). The
/// ids are matched without their inference-profile prefix (`global.`, `us.`, `eu.`…); note
/// that AWS bills the regional (geo) profiles of the Claude 4.5 models 10% above the global
/// profile priced here — set `MODEL_PRICES` for the exact figure.
const BEDROCK: &[(&str, Price)] = &[
    ("anthropic.claude-haiku-4-5", Price::new(1.00, 5.00)),
    ("anthropic.claude-sonnet-4-5", Price::new(3.00, 15.00)),
    ("anthropic.claude-sonnet-4", Price::new(3.00, 15.00)),
    ("anthropic.claude-3-5-haiku", Price::new(0.80, 4.00)),
    ("anthropic.claude-3-haiku", Price::new(0.25, 1.25)),
    ("amazon.nova-micro", Price::new(0.035, 0.14)),
    ("amazon.nova-lite", Price::new(0.06, 0.24)),
    ("amazon.nova-pro", Price::new(0.80, 3.20)),
    ("amazon.titan-embed-text-v2", Price::new(0.02, 0.0)),
    ("amazon.titan-embed-text-v1", Price::new(0.10, 0.0)),
    ("amazon.titan-embed-g1-text", Price::new(0.10, 0.0)),
    ("cohere.embed-english-v3", Price::new(0.10, 0.0)),
    ("cohere.embed-multilingual-v3", Price::new(0.10, 0.0)),
    ("cohere.embed-v4", Price::new(0.12, 0.0)),
];

/// Bedrock's cross-region inference profiles prefix the model id with a geography.
const PROFILE_PREFIXES: &[&str] = &[
    "global.", "us-gov.", "us.", "eu.", "apac.", "au.", "jp.", "ca.",
];

/// The largest price `MODEL_PRICES` accepts, in USD per 1M tokens (the dearest list price
/// today is a few hundred): a typo of a few zeros is refused, not billed.
const MAX_PRICE: f64 = 10_000.0;
const MAX_ENTRIES: usize = 200;

/// The price table: built-in list prices and the `MODEL_PRICES` overrides, which win.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    overrides: BTreeMap<String, Price>,
}

/// A model call's provider and model, from a chat model's name (`openai/gpt-4o-mini`) or an
/// embedder's space (`bedrock/amazon.titan-embed-text-v2:0/512/doc-prefix=…`): the model is
/// what lies between the provider and the dimension (model ids may contain `/`).
pub fn provider_and_model(name: &str) -> (&str, &str) {
    let Some((provider, rest)) = name.split_once('/') else {
        return (name, name);
    };
    let mut end = rest.len();
    let mut offset = 0;
    for segment in rest.split('/') {
        if offset > 0 && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            end = offset - 1;
            break;
        }
        offset += segment.len() + 1;
    }
    (provider, &rest[..end])
}

fn longest_prefix(table: &[(&str, Price)], model: &str) -> Option<Price> {
    table
        .iter()
        .filter(|(id, _)| model.starts_with(id))
        .max_by_key(|(id, _)| id.len())
        .map(|(_, p)| *p)
}

impl Prices {
    /// Parses `MODEL_PRICES`: comma-separated `model=input/output` in USD per 1M tokens, e.g.
    /// `gpt-4o-mini=0.15/0.60,my-embedder=0.02` (an embedding model's output price may be
    /// left out). The model is the id as configured (`LLM_MODEL`, `EMBEDDING_MODEL`).
    pub fn parse(text: &str) -> Result<Prices, String> {
        let mut overrides = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (model, price) = entry.split_once('=').ok_or_else(|| {
                format!("{entry:?} is not model=input/output (USD per 1M tokens)")
            })?;
            let model = model.trim();
            if model.is_empty() || model.len() > 200 || model.chars().any(char::is_whitespace) {
                return Err(format!("{entry:?}: the model id must be one word"));
            }
            let (input, output) = match price.split_once('/') {
                Some((i, o)) => (i, o),
                None => (price, "0"),
            };
            let number = |s: &str| -> Result<f64, String> {
                let v: f64 = s.trim().parse().map_err(|_| {
                    format!(
                        "{entry:?}: {:?} is not a price in USD per 1M tokens",
                        s.trim()
                    )
                })?;
                if !v.is_finite() || !(0.0..=MAX_PRICE).contains(&v) {
                    return Err(format!(
                        "{entry:?}: a price is between 0 and {MAX_PRICE} USD per 1M tokens"
                    ));
                }
                Ok(v)
            };
            let price = Price::new(number(input)?, number(output)?);
            if overrides.insert(model.to_string(), price).is_some() {
                return Err(format!("{model:?} is priced twice"));
            }
            if overrides.len() > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} prices"));
            }
        }
        Ok(Prices { overrides })
    }

    /// The price of a provider's model, `None` when neither `MODEL_PRICES` nor the built-in
    /// table knows it. Local providers are free.
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        if let Some(p) = self.overrides.get(model) {
            return Some(*p);
        }
        match provider {
            "ollama" | "lexical" => Some(Price::new(0.0, 0.0)),
            "openai" => longest_prefix(OPENAI, model),
            "bedrock" => {
                let bare = PROFILE_PREFIXES
                    .iter()
                    .find_map(|p| model.strip_prefix(p))
                    .unwrap_or(model);
                longest_prefix(BEDROCK, bare)
            }
            _ => None,
        }
    }

    /// What a call of `name` (a chat model's name or an embedder's space) with this usage
    /// cost, in USD; 0 for a model without a price (named once in a warning).
    pub fn cost(&self, name: &str, usage: &Usage) -> f64 {
        let (provider, model) = provider_and_model(name);
        match self.price(provider, model) {
            Some(p) => p.cost(usage),
            None => {
                warn_unpriced(provider, model);
                0.0
            }
        }
    }
}

/// `MODEL_PRICES` as the status page shows it.
impl std::fmt::Display for Prices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.overrides.is_empty() {
            return f.write_str("built-in list prices");
        }
        let entries: Vec<String> = self
            .overrides
            .iter()
            .map(|(model, p)| format!("{model}={}/{}", p.input, p.output))
            .collect();
        write!(f, "{} (else built-in list prices)", entries.join(","))
    }
}

fn warn_unpriced(provider: &str, model: &str) {
    static WARNED: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    let first = WARNED
        .get_or_init(Mutex::default)
        .lock()
        .map(|mut w| w.insert(format!("{provider}/{model}")))
        .unwrap_or(false);
    if first {
        tracing::warn!(
            provider,
            model,
            "no price known for this model: its cost counts as 0 (set MODEL_PRICES={model}=input/output in USD per 1M tokens)"
        );
    }
}

/// Cost is kept in counters of whole nano-dollars (the state store's counters are integers;
/// one embedding batch can cost a few millionths of a dollar).
pub fn to_nano_usd(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

pub fn from_nano_usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cost_usd: 0.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn cost_follows_the_list_price_of_each_family() {
        let p = Prices::default();
        // 12,000 in and 300 out on gpt-4o-mini: 12000*0.15/1e6 + 300*0.60/1e6.
        assert!(close(
            p.cost("openai/gpt-4o-mini", &usage(12_000, 300)),
            0.0018 + 0.00018
        ));
        // A dated snapshot is priced like its family; gpt-4.1-mini is not gpt-4.1.
        assert!(close(
            p.cost("openai/gpt-4o-mini-2024-07-18", &usage(1_000_000, 0)),
            0.15
        ));
        assert!(close(
            p.cost("openai/gpt-4.1-mini", &usage(1_000_000, 1_000_000)),
            2.0
        ));
        assert!(close(
            p.cost("openai/gpt-4.1", &usage(1_000_000, 1_000_000)),
            10.0
        ));
        // The Bedrock default, through its global inference profile.
        assert!(close(
            p.cost(
                "bedrock/global.anthropic.claude-haiku-4-5-20251001-v1:0",
                &usage(2_000, 100)
            ),
            0.002 + 0.0005
        ));
        // An embedder's space: provider/model/dimension/marking.
        assert!(close(
            p.cost(
                "bedrock/amazon.titan-embed-text-v2:0/512/doc-prefix=passage:",
                &usage(50_000, 0)
            ),
            0.001
        ));
        assert!(close(
            p.cost("openai/text-embedding-3-small/1536", &usage(1_000_000, 0)),
            0.02
        ));
        assert_eq!(p.cost("ollama/qwen2.5:7b", &usage(5_000, 500)), 0.0);
        assert_eq!(p.cost("lexical", &usage(5_000, 500)), 0.0);
        assert_eq!(p.cost("openai/some-local-vllm", &usage(5_000, 500)), 0.0);
        assert_eq!(p.price("openai", "some-local-vllm"), None);
    }

    #[test]
    fn model_prices_override_and_name_models_with_slashes() {
        let p = Prices::parse(" gpt-4o-mini=1/2 , Qwen/Qwen2.5-7B=0.5/1.5,my-embed=0.3").unwrap();
        assert!(close(
            p.cost("openai/gpt-4o-mini", &usage(1_000_000, 1_000_000)),
            3.0
        ));
        assert!(close(
            p.cost("openai/Qwen/Qwen2.5-7B", &usage(2_000_000, 0)),
            1.0
        ));
        assert!(close(
            p.cost("openai/my-embed/768", &usage(1_000_000, 0)),
            0.3
        ));
        assert_eq!(Prices::parse("").unwrap(), Prices::default());
        assert_eq!(Prices::default().to_string(), "built-in list prices");
        assert_eq!(
            Prices::parse("b=1/2,a=0.5").unwrap().to_string(),
            "a=0.5/0,b=1/2 (else built-in list prices)"
        );
    }

    #[test]
    fn hostile_model_prices_are_refused_with_a_reason() {
        for (text, says) in [
            ("gpt-4o", "not model=input/output"),
            ("=1/2", "one word"),
            ("a b=1/2", "one word"),
            ("m=one/2", "is not a price"),
            ("m=1/2/3", "is not a price"),
            ("m=-1/2", "between 0 and"),
            ("m=NaN/1", "between 0 and"),
            ("m=inf/1", "between 0 and"),
            ("m=1e9/1", "between 0 and"),
            ("m=1/2,m=3/4", "priced twice"),
        ] {
            let err = Prices::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("m{i}=1")).collect();
        assert!(Prices::parse(&many.join(",")).is_err());
    }

    #[test]
    fn the_model_lies_between_provider_and_dimension() {
        assert_eq!(
            provider_and_model("openai/text-embedding-3-small/1536/doc-prefix=a/b"),
            ("openai", "text-embedding-3-small")
        );
        assert_eq!(
            provider_and_model("bedrock/eu.anthropic.claude-haiku-4-5-20251001-v1:0"),
            ("bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0")
        );
        assert_eq!(provider_and_model("lexical"), ("lexical", "lexical"));
        assert_eq!(
            provider_and_model("lexical/hash-v2/256"),
            ("lexical", "hash-v2")
        );
        assert_eq!(to_nano_usd(0.000_002_5), 2_500);
        assert!(close(from_nano_usd(2_500), 0.000_002_5));
    }
}
