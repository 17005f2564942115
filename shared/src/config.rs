//! Configuration: environment variables (the same names on Lambda and in `pai`, see DESIGN §5)
//! parsed once at start-up into typed settings. A bad value stops start-up with one message
//! naming the variable; secrets are wrapped so they never reach a log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;

use crate::domain::{Field, ObjectKind};

/// A secret value: printed as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A configuration error: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad<T>(var: &'static str, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        var,
        message: message.into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Lexical,
    OpenAi,
    Ollama,
    Bedrock,
}

impl Provider {
    fn parse(var: &'static str, s: &str) -> Result<Provider, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lexical" => Ok(Provider::Lexical),
            "openai" => Ok(Provider::OpenAi),
            "ollama" => Ok(Provider::Ollama),
            "bedrock" => Ok(Provider::Bedrock),
            other => bad(
                var,
                format!("unknown provider {other:?} (use openai, ollama, bedrock or lexical)"),
            ),
        }
    }
}

/// How a field is written back to Paperless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldMode {
    Overwrite,
    IfEmpty,
    Never,
}

/// Model settings for one role (chat or embeddings).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub provider: Provider,
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
    pub model: Option<String>,
    pub dimensions: Option<usize>,
    /// Embeddings only: `EMBEDDING_QUERY_PREFIX` / `EMBEDDING_DOCUMENT_PREFIX` as given
    /// (untrimmed: a prefix usually ends in a space; `none` clears the model's default).
    pub query_prefix: Option<String>,
    pub document_prefix: Option<String>,
    /// Embeddings only: `EMBEDDING_INPUT_TYPES`, the `input_type` values for (query, document).
    pub input_types: Option<(String, String)>,
}

/// How documents are tagged and written back.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggingPolicy {
    pub fields: BTreeSet<Field>,
    pub modes: BTreeMap<Field, FieldMode>,
    pub restrict: BTreeSet<ObjectKind>,
    pub processed_tag: String,
    pub failed_tag: String,
    pub trigger_tag: Option<String>,
    pub include_tags: Vec<String>,
    pub exclude_tags: Vec<String>,
    pub custom_fields: Vec<String>,
    pub review_mode: bool,
    pub system_prompt: Option<String>,
    pub max_input_tokens: usize,
    pub max_output_tokens: usize,
}

impl TaggingPolicy {
    pub fn mode(&self, field: Field) -> FieldMode {
        if !self.fields.contains(&field) {
            return FieldMode::Never;
        }
        self.modes
            .get(&field)
            .copied()
            .unwrap_or(FieldMode::Overwrite)
    }

    /// A fingerprint of everything that changes what tagging produces: part of the loop guard.
    pub fn fingerprint(&self) -> String {
        crate::text::sha256_hex(format!("{self:?}").as_bytes())[..16].to_string()
    }
}

/// Where a variable's value came from, shown by the status page (a value no source set is the
/// default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    #[serde(rename = "environment")]
    Environment,
    /// `pai`'s `.env` file (which never overrides the environment).
    #[serde(rename = ".env")]
    DotEnv,
    /// A Lambda's secrets from SSM Parameter Store.
    #[serde(rename = "ssm")]
    Ssm,
    #[serde(rename = "default")]
    Default,
}

/// Every setting, parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paperless_url: Option<String>,
    pub paperless_token: Option<Secret>,
    /// Paperless user id that owns the tags, correspondents and types we create.
    pub paperless_owner: Option<u64>,
    pub webhook_secret: Option<Secret>,
    pub api_keys: Vec<Secret>,
    pub llm: ModelSettings,
    pub embedding: ModelSettings,
    pub policy: TaggingPolicy,
    pub data_dir: PathBuf,
    pub port: u16,
    pub bind: String,
    /// Base URL clients use to reach `pai` (upload links); defaults to `http://BIND:PORT`.
    pub public_url: Option<String>,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    pub max_upload_bytes: usize,
    pub max_receives: u32,
    pub workers: usize,
    pub cache_ttl_secs: i64,
    /// Chat requests per minute per API key.
    pub chat_requests_per_minute: u32,
    /// Model tokens chat may use per API key per day.
    pub chat_daily_tokens: u64,
    /// `pai serve` runs sync this often (0: never); needs PAPERLESS_URL.
    pub sync_interval_minutes: u64,
    /// Context size for every Ollama call (fixed, so the model is not reloaded per document).
    pub ollama_num_ctx: u32,
    /// Model tokens tagging may use per day (0: no cap).
    pub llm_daily_tokens: u64,
    /// Concurrency, rate and circuit breaker of model calls (per process, per role).
    pub model_limits: crate::resilience::Limits,
    /// Model prices per 1M tokens: the built-in list prices and `MODEL_PRICES`.
    pub model_prices: crate::cost::Prices,
    /// Tag marking documents whose suggestion waits for review (review mode); removed on approve.
    pub review_tag: String,
    /// Browser-facing Paperless base URL for links (citations, jobs); `PAPERLESS_URL` when unset.
    pub paperless_public_url: Option<String>,
    /// The user's time zone (`TZ`): "today" for the created-date plausibility and the daily budget.
    pub time_zone: jiff::tz::TimeZone,
    /// The variables that had a value, and where it came from (the rest are defaults).
    pub sources: BTreeMap<String, Source>,
    /// Where the web UI sends chat requests when it is not this server (on AWS: the chat
    /// function URL, from the ingest function's `CHAT_URL`); `None`: the same origin.
    pub chat_url: Option<String>,
    /// Which credentials this process was required to have: a process without the model's
    /// key (the ingest Lambda) cannot check the model, only report that others use it.
    pub required: Required,
    /// Whether the API may answer without API keys, and why.
    pub keyless: Keyless,
}

/// When an API without configured keys may still answer (authorisation fails closed otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyless {
    /// Never: a process that needs keys and has none does not start; if one is built anyway,
    /// every keyed route answers 401.
    Refused,
    /// `pai serve` on a loopback address: only this machine can reach it.
    Loopback,
    /// The chat function URL with `API_AUTH=iam`: AWS checks a SigV4 signature before the
    /// function runs.
    Iam,
}

/// Whether a process must have `API_KEYS` to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeysRule {
    /// `pai`: keys are needed only off loopback (`check_serve`); functions that serve no API.
    NotNeeded,
    /// The ingest function: its routes are reachable by anyone who finds the URL.
    Required,
    /// The chat function: required unless `API_AUTH=iam` puts IAM auth on its function URL.
    RequiredUnlessIam,
}

/// Which credentials must be present: those of the services this process calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Required {
    pub paperless_token: bool,
    pub webhook_secret: bool,
    /// An `openai` chat model needs a key or a base URL.
    pub llm_key: bool,
    /// An `openai` embedder needs a key or a base URL.
    pub embedding_key: bool,
    pub api_keys: ApiKeysRule,
}

impl Required {
    /// `pai`: one process does everything.
    pub const ALL: Required = Required {
        paperless_token: true,
        webhook_secret: true,
        llm_key: true,
        embedding_key: true,
        api_keys: ApiKeysRule::NotNeeded,
    };
}

pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(env: Lookup, var: &str) -> Option<String> {
    env(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn list(env: Lookup, var: &str) -> Vec<String> {
    get(env, var)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn number<T>(
    env: Lookup,
    var: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = get(env, var) else {
        return Ok(default);
    };
    match raw.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => bad(
            var,
            format!(
                "{raw:?} is not a number from {} to {}",
                range.start(),
                range.end()
            ),
        ),
    }
}

fn boolean(env: Lookup, var: &'static str) -> Result<bool, ConfigError> {
    match get(env, var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0" | "no" | "off") => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some(other) => bad(var, format!("{other:?} is not true or false")),
    }
}

fn url(env: Lookup, var: &'static str) -> Result<Option<String>, ConfigError> {
    let Some(raw) = get(env, var) else {
        return Ok(None);
    };
    if !(raw.starts_with("http://") || raw.starts_with("https://")) || raw.len() < 10 {
        return bad(var, format!("{raw:?} is not an http(s) URL"));
    }
    Ok(Some(raw.trim_end_matches('/').to_string()))
}

/// `TZ`: an IANA name (`Europe/Berlin`), a POSIX rule (`CET-1CEST,M3.5.0,M10.5.0/3`), or
/// UTC when unset. A leading `:` is allowed (Lambda sets `TZ=:UTC`).
fn time_zone(env: Lookup) -> Result<jiff::tz::TimeZone, ConfigError> {
    let Some(raw) = get(env, "TZ") else {
        return Ok(jiff::tz::TimeZone::UTC);
    };
    let name = raw.trim_start_matches(':');
    if name.eq_ignore_ascii_case("utc") || name.eq_ignore_ascii_case("etc/utc") {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    jiff::tz::TimeZone::get(name)
        .or_else(|_| jiff::tz::TimeZone::posix(name))
        .or_else(|_| {
            bad(
                "TZ",
                format!("{raw:?} is not a time zone (use an IANA name such as Europe/Berlin)"),
            )
        })
}

/// Fails closed: a function whose API is reachable from anywhere does not start without keys.
/// `API_AUTH` is read only where IAM auth is an option (the chat function URL).
fn keyless(env: Lookup, rule: ApiKeysRule, no_keys: bool) -> Result<Keyless, ConfigError> {
    const HOW: &str = "store the keys as the SSM parameter SECRETS_PREFIX + API_KEYS (infra/put-secrets.sh) and check SecretsPrefix";
    match rule {
        ApiKeysRule::NotNeeded => Ok(Keyless::Loopback),
        ApiKeysRule::Required if no_keys => bad(
            "API_KEYS",
            format!(
                "required: without API keys anyone who finds the URL could read and change the archive; {HOW}"
            ),
        ),
        ApiKeysRule::RequiredUnlessIam => {
            let iam = match get(env, "API_AUTH").as_deref() {
                None | Some("api_keys") => false,
                Some("iam") => true,
                Some(other) => return bad("API_AUTH", format!("{other:?} is not api_keys or iam")),
            };
            if iam {
                Ok(Keyless::Iam)
            } else if no_keys {
                bad(
                    "API_KEYS",
                    format!(
                        "required: without API keys anyone who finds the chat URL could ask about every document; {HOW}, or deploy with ChatAuth=AWS_IAM"
                    ),
                )
            } else {
                Ok(Keyless::Refused)
            }
        }
        ApiKeysRule::Required => Ok(Keyless::Refused),
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Reads from a map (tests, `.env` merging).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        Self::from_lookup(&|k| map.get(k).cloned())
    }

    pub fn from_lookup(env: Lookup) -> Result<Settings, ConfigError> {
        Self::from_lookup_requiring(env, Required::ALL)
    }

    /// Like `from_lookup`, requiring only the secrets this process uses when `PAPERLESS_URL`
    /// is set: each Lambda gets only its own secrets (chat links to documents, it never calls
    /// Paperless; only ingest receives webhooks).
    pub fn from_lookup_requiring(env: Lookup, required: Required) -> Result<Settings, ConfigError> {
        // Every variable read that had a value came from the environment, unless the caller
        // says otherwise (`mark_sources`).
        let seen = std::cell::RefCell::new(BTreeMap::new());
        let recording = |k: &str| {
            let v = env(k);
            if v.as_deref().is_some_and(|v| !v.trim().is_empty()) {
                seen.borrow_mut().insert(k.to_string(), Source::Environment);
            }
            v
        };
        let mut settings = Self::parse(&recording, required)?;
        settings.sources = seen.into_inner();
        settings.required = required;
        Ok(settings)
    }

    /// Records that `names` (those that had a value) came from `source`.
    pub fn mark_sources<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, source: Source) {
        for name in names {
            if let Some(s) = self.sources.get_mut(name) {
                *s = source;
            }
        }
    }

    /// Where `name`'s value came from.
    pub fn source(&self, name: &str) -> Source {
        self.sources.get(name).copied().unwrap_or(Source::Default)
    }

    fn parse(env: Lookup, required: Required) -> Result<Settings, ConfigError> {
        let paperless_url = url(env, "PAPERLESS_URL")?;
        let paperless_token = get(env, "PAPERLESS_TOKEN").map(Secret::new);
        let webhook_secret = get(env, "WEBHOOK_SECRET").map(Secret::new);
        if paperless_url.is_some() {
            if required.paperless_token && paperless_token.is_none() {
                return bad("PAPERLESS_TOKEN", "required when PAPERLESS_URL is set");
            }
            if required.webhook_secret && webhook_secret.is_none() {
                return bad("WEBHOOK_SECRET", "required when PAPERLESS_URL is set");
            }
        }
        if let Some(s) = &webhook_secret
            && s.expose().len() < 16
        {
            return bad("WEBHOOK_SECRET", "use at least 16 characters");
        }
        let api_keys: Vec<Secret> = list(env, "API_KEYS").into_iter().map(Secret::new).collect();
        if let Some(k) = api_keys.iter().find(|k| k.expose().len() < 16) {
            return bad(
                "API_KEYS",
                format!(
                    "every key needs at least 16 characters ({} has {})",
                    k,
                    k.expose().len()
                ),
            );
        }
        let keyless = keyless(env, required.api_keys, api_keys.is_empty())?;

        let llm_provider = get(env, "LLM_PROVIDER")
            .map(|p| Provider::parse("LLM_PROVIDER", &p))
            .transpose()?
            .unwrap_or(Provider::Lexical);
        let llm = ModelSettings {
            provider: llm_provider,
            base_url: url(env, "LLM_BASE_URL")?,
            api_key: get(env, "LLM_API_KEY").map(Secret::new),
            model: get(env, "LLM_MODEL"),
            dimensions: None,
            query_prefix: None,
            document_prefix: None,
            input_types: None,
        };
        let embedding_provider = get(env, "EMBEDDING_PROVIDER")
            .map(|p| Provider::parse("EMBEDDING_PROVIDER", &p))
            .transpose()?
            .unwrap_or(llm_provider);
        let dimensions = get(env, "EMBEDDING_DIMENSIONS")
            .map(|_| number(env, "EMBEDDING_DIMENSIONS", 0usize, 1..=4096))
            .transpose()?;
        let embedding = ModelSettings {
            provider: embedding_provider,
            base_url: url(env, "EMBEDDING_BASE_URL")?.or_else(|| llm.base_url.clone()),
            api_key: get(env, "EMBEDDING_API_KEY")
                .map(Secret::new)
                .or_else(|| llm.api_key.clone()),
            model: get(env, "EMBEDDING_MODEL"),
            dimensions,
            query_prefix: env("EMBEDDING_QUERY_PREFIX").filter(|p| !p.is_empty()),
            document_prefix: env("EMBEDDING_DOCUMENT_PREFIX").filter(|p| !p.is_empty()),
            input_types: match get(env, "EMBEDDING_INPUT_TYPES") {
                None => None,
                Some(v) => match v.split_once(',') {
                    Some((q, d)) if !q.trim().is_empty() && !d.trim().is_empty() => {
                        Some((q.trim().to_string(), d.trim().to_string()))
                    }
                    _ => {
                        return Err(ConfigError {
                            var: "EMBEDDING_INPUT_TYPES",
                            message: format!(
                                "must be two input types, query then document, like \"query,passage\", not {v:?}"
                            ),
                        });
                    }
                },
            },
        };
        for (role, m, var, needed) in [
            ("LLM", &llm, "LLM_BASE_URL", required.llm_key),
            (
                "EMBEDDING",
                &embedding,
                "LLM_BASE_URL",
                required.embedding_key,
            ),
        ] {
            if needed
                && m.provider == Provider::OpenAi
                && m.base_url.is_none()
                && m.api_key.is_none()
            {
                return bad(
                    var,
                    format!(
                        "{role} provider openai needs LLM_BASE_URL (a local server) or LLM_API_KEY (api.openai.com)"
                    ),
                );
            }
        }

        let fields: BTreeSet<Field> = match get(env, "TAG_FIELDS") {
            None => [
                Field::Title,
                Field::Tags,
                Field::Correspondent,
                Field::DocumentType,
                Field::Created,
            ]
            .into(),
            Some(raw) => raw
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.parse())
                .collect::<Result<_, _>>()
                .or_else(|e: String| bad("TAG_FIELDS", e))?,
        };
        let mut modes = BTreeMap::new();
        for pair in list(env, "FIELD_MODES") {
            let Some((field, mode)) = pair.split_once('=') else {
                return bad("FIELD_MODES", format!("{pair:?} is not field=mode"));
            };
            let field: Field = field.parse().or_else(|e: String| bad("FIELD_MODES", e))?;
            let mode = match mode.trim() {
                "overwrite" => FieldMode::Overwrite,
                "if_empty" => FieldMode::IfEmpty,
                "never" => FieldMode::Never,
                other => {
                    return bad(
                        "FIELD_MODES",
                        format!("mode {other:?} is not overwrite, if_empty or never"),
                    );
                }
            };
            modes.insert(field, mode);
        }
        let mut restrict = BTreeSet::new();
        for kind in list(env, "RESTRICT_TO_EXISTING") {
            restrict.insert(match kind.as_str() {
                "tags" => ObjectKind::Tag,
                "correspondents" => ObjectKind::Correspondent,
                "document_types" => ObjectKind::DocumentType,
                other => {
                    return bad(
                        "RESTRICT_TO_EXISTING",
                        format!("{other:?} is not tags, correspondents or document_types"),
                    );
                }
            });
        }
        let policy = TaggingPolicy {
            fields,
            modes,
            restrict,
            processed_tag: get(env, "PROCESSED_TAG").unwrap_or_else(|| "ai-processed".into()),
            failed_tag: get(env, "FAILED_TAG").unwrap_or_else(|| "ai-failed".into()),
            trigger_tag: get(env, "TRIGGER_TAG"),
            include_tags: list(env, "INCLUDE_TAGS"),
            exclude_tags: list(env, "EXCLUDE_TAGS"),
            custom_fields: list(env, "CUSTOM_FIELDS"),
            review_mode: boolean(env, "REVIEW_MODE")?,
            system_prompt: get(env, "SYSTEM_PROMPT"),
            max_input_tokens: number(env, "MAX_INPUT_TOKENS", 6000, 256..=1_000_000)?,
            max_output_tokens: number(env, "MAX_OUTPUT_TOKENS", 600, 16..=100_000)?,
        };

        let chunk_tokens = number(env, "CHUNK_TOKENS", 400, 32..=8192)?;
        let chunk_overlap = number(env, "CHUNK_OVERLAP", 60, 0..=4096)?;
        if chunk_overlap >= chunk_tokens {
            return bad(
                "CHUNK_OVERLAP",
                format!("must be smaller than CHUNK_TOKENS ({chunk_tokens})"),
            );
        }
        let bind = get(env, "BIND").unwrap_or_else(|| "127.0.0.1".into());
        let Ok(bind_ip) = bind.parse::<std::net::IpAddr>() else {
            return bad("BIND", format!("{bind:?} is not an IP address"));
        };
        let keyless = match keyless {
            Keyless::Loopback if !bind_ip.is_loopback() => Keyless::Refused,
            k => k,
        };
        let paperless_owner = get(env, "PAPERLESS_OWNER_ID")
            .map(|_| number(env, "PAPERLESS_OWNER_ID", 0u64, 1..=u64::MAX / 2))
            .transpose()?;
        Ok(Settings {
            paperless_url,
            paperless_token,
            paperless_owner,
            webhook_secret,
            api_keys,
            llm,
            embedding,
            policy,
            data_dir: PathBuf::from(get(env, "DATA_DIR").unwrap_or_else(|| "./pai-data".into())),
            port: number(env, "PORT", 8080u16, 0..=65535)?,
            bind,
            public_url: url(env, "PUBLIC_URL")?,
            chunk_tokens,
            chunk_overlap,
            max_upload_bytes: number(
                env,
                "MAX_UPLOAD_BYTES",
                25 * 1024 * 1024,
                1..=1024 * 1024 * 1024,
            )?,
            max_receives: number(env, "MAX_RECEIVES", 8, 1..=1000)?,
            workers: number(env, "WORKERS", 4, 1..=256)?,
            cache_ttl_secs: number(env, "CACHE_TTL_DAYS", 30i64, 1..=3650)? * 86_400,
            chat_requests_per_minute: number(env, "CHAT_REQUESTS_PER_MINUTE", 30, 1..=1_000_000)?,
            chat_daily_tokens: number(env, "CHAT_DAILY_TOKENS", 200_000, 1..=u64::MAX / 2)?,
            sync_interval_minutes: number(env, "SYNC_INTERVAL_MINUTES", 15, 0..=10_080)?,
            ollama_num_ctx: number(env, "OLLAMA_NUM_CTX", 8192, 512..=1_048_576)?,
            llm_daily_tokens: number(env, "LLM_DAILY_TOKENS", 0, 0..=u64::MAX / 2)?,
            review_tag: get(env, "REVIEW_TAG").unwrap_or_else(|| "ai-review".into()),
            paperless_public_url: url(env, "PAPERLESS_PUBLIC_URL")?,
            time_zone: time_zone(env)?,
            model_prices: match get(env, "MODEL_PRICES") {
                Some(text) => crate::cost::Prices::parse(&text).or_else(|m| {
                    bad(
                        "MODEL_PRICES",
                        format!("{m}; expected model=input/output,… in USD per 1M tokens"),
                    )
                })?,
                None => crate::cost::Prices::default(),
            },
            model_limits: crate::resilience::Limits {
                max_concurrency: number(env, "LLM_MAX_CONCURRENCY", 64, 1..=1024)?,
                requests_per_minute: number(env, "LLM_REQUESTS_PER_MINUTE", 0, 0..=1_000_000)?,
                breaker_failures: number(env, "LLM_BREAKER_FAILURES", 5, 1..=1000)?,
                breaker_cooldown: std::time::Duration::from_secs(number(
                    env,
                    "LLM_BREAKER_COOLDOWN_SECS",
                    30,
                    1..=3600,
                )?),
            },
            sources: BTreeMap::new(),
            chat_url: None,
            required,
            keyless,
        })
    }

    /// Today's date in the configured time zone.
    pub fn today(&self) -> chrono::NaiveDate {
        let date = jiff::Timestamp::now()
            .to_zoned(self.time_zone.clone())
            .date();
        chrono::NaiveDate::from_ymd_opt(
            i32::from(date.year()),
            u32::from(date.month().unsigned_abs()),
            u32::from(date.day().unsigned_abs()),
        )
        .expect("jiff dates are valid calendar dates")
    }

    /// `pai serve` refuses a non-loopback address without API keys.
    pub fn check_serve(&self) -> Result<(), ConfigError> {
        let loopback = self
            .bind
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
        if !loopback && self.api_keys.is_empty() {
            return bad(
                "API_KEYS",
                format!("required when BIND is {} (not loopback)", self.bind),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_run_offline() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.llm.provider, Provider::Lexical);
        assert_eq!(s.embedding.provider, Provider::Lexical);
        assert_eq!(s.policy.mode(Field::Title), FieldMode::Overwrite);
        assert_eq!(s.policy.mode(Field::CustomFields), FieldMode::Never);
        assert_eq!((s.port, s.bind.as_str()), (8080, "127.0.0.1"));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("LLM_PROVIDER", "gpt")], "LLM_PROVIDER"),
            (&[("PORT", "80000")], "PORT"),
            (&[("PAPERLESS_URL", "ftp://x")], "PAPERLESS_URL"),
            (
                &[("PAPERLESS_URL", "http://paperless:8000")],
                "PAPERLESS_TOKEN",
            ),
            (
                &[
                    ("PAPERLESS_URL", "http://paperless:8000"),
                    ("PAPERLESS_TOKEN", "t"),
                ],
                "WEBHOOK_SECRET",
            ),
            (&[("WEBHOOK_SECRET", "short")], "WEBHOOK_SECRET"),
            (&[("TAG_FIELDS", "title,colour")], "TAG_FIELDS"),
            (&[("FIELD_MODES", "title=sometimes")], "FIELD_MODES"),
            (
                &[("RESTRICT_TO_EXISTING", "people")],
                "RESTRICT_TO_EXISTING",
            ),
            (&[("REVIEW_MODE", "maybe")], "REVIEW_MODE"),
            (
                &[("CHUNK_TOKENS", "100"), ("CHUNK_OVERLAP", "100")],
                "CHUNK_OVERLAP",
            ),
            (&[("LLM_PROVIDER", "openai")], "LLM_BASE_URL"),
            (&[("BIND", "everywhere")], "BIND"),
            (&[("TZ", "Mars/Olympus_Mons")], "TZ"),
            (
                &[("PAPERLESS_PUBLIC_URL", "paperless.lan")],
                "PAPERLESS_PUBLIC_URL",
            ),
        ];
        for (pairs, var) in cases {
            let e = parse(pairs).unwrap_err();
            assert_eq!(e.var, *var, "{pairs:?} → {e}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = parse(&[
            ("API_KEYS", "a-very-long-api-key-1, another-long-api-key-2"),
            ("WEBHOOK_SECRET", "0123456789abcdef!"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("a-very-long") && !shown.contains("0123456789"),
            "{shown}"
        );
        assert_eq!(s.api_keys.len(), 2);
        assert!(
            parse(&[("BIND", "0.0.0.0")])
                .unwrap()
                .check_serve()
                .is_err()
        );
    }

    #[test]
    fn today_is_the_configured_time_zones_day() {
        // UTC+14 and UTC-12 are always on different calendar days.
        let kiritimati = parse(&[("TZ", "Pacific/Kiritimati")]).unwrap().today();
        let baker = parse(&[("TZ", "Etc/GMT+12")]).unwrap().today();
        let gap = (kiritimati - baker).num_days();
        assert!((1..=2).contains(&gap), "{kiritimati} {baker}");
        assert_eq!(
            parse(&[("TZ", ":UTC")]).unwrap().today(),
            chrono::Utc::now().date_naive()
        );
    }

    #[test]
    fn an_api_reachable_from_anywhere_needs_keys() {
        let lookup = |pairs: &'static [(&str, &str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let with = |rule, pairs: &'static [(&str, &str)]| {
            let required = Required {
                api_keys: rule,
                ..Required::ALL
            };
            Settings::from_lookup_requiring(&lookup(pairs), required)
        };
        let e = with(ApiKeysRule::Required, &[]).unwrap_err();
        assert_eq!(e.var, "API_KEYS", "{e}");
        // IAM auth is an option for chat only; the ingest function ignores API_AUTH.
        let e = with(ApiKeysRule::Required, &[("API_AUTH", "iam")]).unwrap_err();
        assert_eq!(e.var, "API_KEYS", "{e}");
        let e = with(ApiKeysRule::RequiredUnlessIam, &[]).unwrap_err();
        assert_eq!(e.var, "API_KEYS", "{e}");
        let s = with(ApiKeysRule::RequiredUnlessIam, &[("API_AUTH", "iam")]).unwrap();
        assert_eq!(s.keyless, Keyless::Iam);
        let s = with(
            ApiKeysRule::Required,
            &[("API_KEYS", "a-very-long-api-key-1")],
        )
        .unwrap();
        assert_eq!(s.keyless, Keyless::Refused);
        // `pai`: loopback may run open; any other address may not, even if built anyway.
        assert_eq!(parse(&[]).unwrap().keyless, Keyless::Loopback);
        assert_eq!(
            parse(&[("BIND", "0.0.0.0")]).unwrap().keyless,
            Keyless::Refused
        );
    }

    #[test]
    fn each_value_knows_its_source() {
        let mut s = parse(&[("PORT", "9000"), ("LLM_MODEL", "m"), ("REVIEW_MODE", " ")]).unwrap();
        s.mark_sources(["LLM_MODEL", "TAG_FIELDS"], Source::DotEnv);
        assert_eq!(s.source("PORT"), Source::Environment);
        assert_eq!(s.source("LLM_MODEL"), Source::DotEnv);
        // Blank is unset; a name marked but never set stays a default.
        assert_eq!(s.source("REVIEW_MODE"), Source::Default);
        assert_eq!(s.source("TAG_FIELDS"), Source::Default);
    }

    #[test]
    fn field_modes_and_restrictions() {
        let s = parse(&[
            ("FIELD_MODES", "title=if_empty, created=never"),
            ("RESTRICT_TO_EXISTING", "tags,document_types"),
        ])
        .unwrap();
        assert_eq!(s.policy.mode(Field::Title), FieldMode::IfEmpty);
        assert_eq!(s.policy.mode(Field::Created), FieldMode::Never);
        assert!(
            s.policy.restrict.contains(&ObjectKind::Tag)
                && !s.policy.restrict.contains(&ObjectKind::Correspondent)
        );
    }
}
