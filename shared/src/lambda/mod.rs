//! What the six Lambda doors share: which ports each function binds to which AWS resource
//! (`wire`, one wiring per function, compiled from the function crate's features), settings
//! from the environment plus secrets from SSM Parameter Store, the SQS batch and schedule
//! handlers, and metrics as CloudWatch Embedded Metric Format.
//!
//! A function's `main` only names its wiring and the runtime entry point; everything else
//! lives here so it is tested once, against moto, with the same code that runs on AWS.

pub mod emf;
mod env;
pub mod grants;
mod secrets;
#[cfg(feature = "stage")]
pub mod sqs;
pub mod wire;

use aws_config::SdkConfig;

pub use env::Env;
pub use wire::Wiring;

use crate::config::{ApiKeysRule, ConfigError, Required};
use crate::pipeline::{BlobSlot, Queues, Services};

/// The Lambda functions of the SAM template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Function {
    /// HTTP API: webhook, uploads, jobs, suggestions.
    Ingest,
    /// SQS: fetch or read the document, chunk it (also S3 upload notifications).
    Chunk,
    /// SQS: embed new chunks into the vector index.
    Embed,
    /// SQS: suggest and write back metadata.
    Tag,
    /// Function URL, streaming: questions over the archive.
    Chat,
    /// EventBridge schedule: queue what changed in Paperless.
    Sync,
}

impl Function {
    pub const ALL: [Function; 6] = [
        Function::Ingest,
        Function::Chunk,
        Function::Embed,
        Function::Tag,
        Function::Chat,
        Function::Sync,
    ];

    /// The name in `functions/<name>` and in metrics' `Function` dimension.
    pub fn name(self) -> &'static str {
        match self {
            Function::Ingest => "ingest",
            Function::Chunk => "chunk",
            Function::Embed => "embed",
            Function::Tag => "tag",
            Function::Chat => "chat",
            Function::Sync => "sync",
        }
    }

    /// The secrets it reads from SSM when `SECRETS` does not say otherwise; the template's
    /// IAM policy allows exactly these names.
    pub fn secrets(self) -> &'static [&'static str] {
        match self {
            Function::Ingest => &["WEBHOOK_SECRET", "API_KEYS", "PAPERLESS_TOKEN"],
            Function::Chunk | Function::Sync => &["PAPERLESS_TOKEN"],
            Function::Embed => &["LLM_API_KEY", "EMBEDDING_API_KEY"],
            Function::Tag => &["PAPERLESS_TOKEN", "LLM_API_KEY"],
            Function::Chat => &["API_KEYS", "LLM_API_KEY", "EMBEDDING_API_KEY"],
        }
    }

    /// What must accompany the settings for this function to do its work: a function that
    /// never calls Paperless or a model starts without their credentials.
    fn required(self) -> Required {
        let is = |fs: &[Function]| fs.contains(&self);
        Required {
            api_keys: match self {
                Function::Ingest => ApiKeysRule::Required,
                Function::Chat => ApiKeysRule::RequiredUnlessIam,
                _ => ApiKeysRule::NotNeeded,
            },
            paperless_token: is(&[
                Function::Ingest,
                Function::Chunk,
                Function::Tag,
                Function::Sync,
            ]),
            webhook_secret: self == Function::Ingest,
            llm_key: is(&[Function::Tag, Function::Chat]),
            embedding_key: is(&[Function::Embed, Function::Chat]),
        }
    }
}

/// Why a cold start could not build the function.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading secrets from SSM Parameter Store: {0}")]
    Secrets(String),
}

/// Builds `function`'s services from `env` (which already holds its secrets) through its
/// wiring: only in a build that has every function's features (the test suite).
#[cfg(every_wiring)]
pub fn services(function: Function, sdk: &SdkConfig, env: &Env) -> Result<wire::Wired, StartError> {
    wire::build(function, sdk, env)
}

/// The AWS configuration of a function, from what Lambda gives every function: its region and
/// its role's credentials as environment variables (`AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), plus `AWS_ENDPOINT_URL` for an emulator.
/// Not `aws_config::defaults`: its provider chains (profile files, web identity through STS,
/// container and instance metadata) never answer on Lambda, and linking them costs every
/// function the STS client and the IMDS and profile code. Bedrock's client is built from this
/// configuration too (`providers::AwsConfig::Given`); only `pai` loads the default chains.
fn sdk_config(var: impl Fn(&str) -> Option<String>) -> SdkConfig {
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_sdk_dynamodb::config::SharedCredentialsProvider;
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let mut config = SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ));
    if let Some(region) = set("AWS_REGION").or_else(|| set("AWS_DEFAULT_REGION")) {
        config = config.region(aws_config::Region::new(region));
    }
    if let Some(url) = set("AWS_ENDPOINT_URL") {
        config = config.endpoint_url(url);
    }
    config.build()
}

/// A cold start: JSON logs (and spans, with an OTLP endpoint), the EMF recorder, the AWS
/// configuration from the standard chain (region, credentials, `AWS_ENDPOINT_URL`), then
/// its secrets and wiring. Errors here fail the init phase with one message naming what is wrong.
pub async fn start<S>(wiring: Wiring<S>) -> Result<S, lambda_runtime::Error> {
    let function = wiring.function;
    crate::telemetry::init_lambda_subscriber(function.name());
    emf::install(function);
    let sdk = sdk_config(|name| std::env::var(name).ok());
    let mut env = Env::from_process();
    add_secrets(function, &sdk, &mut env)
        .await
        .and_then(|()| (wiring.build)(&sdk, &env))
        .inspect_err(
            |e| tracing::error!(error = %e, function = function.name(), "cold start failed"),
        )
        .map_err(Into::into)
}

/// `function`'s secrets from SSM, added to `env`, then its services (the test suite's door;
/// a function's binary goes through `start` with its own wiring).
#[cfg(every_wiring)]
pub async fn load(
    function: Function,
    sdk: &SdkConfig,
    env: &mut Env,
) -> Result<wire::Wired, StartError> {
    add_secrets(function, sdk, env).await?;
    wire::build(function, sdk, env)
}

/// The function's secrets from SSM, added to `env`.
async fn add_secrets(function: Function, sdk: &SdkConfig, env: &mut Env) -> Result<(), StartError> {
    let names = env.secret_names(function);
    if !names.is_empty() {
        let ssm = aws_sdk_ssm::Client::new(sdk);
        env.add_secrets(secrets::fetch(&ssm, &env.secrets_prefix(), &names).await?);
    }
    Ok(())
}

/// The schedule door: one sync run per event; a failure fails the invocation (EventBridge
/// retries it) after its metrics are written.
pub async fn sync_on_schedule<B: BlobSlot, M>(
    svc: &Services<B, Queues, M>,
    _event: lambda_runtime::LambdaEvent<
        aws_lambda_events::event::cloudwatch_events::CloudWatchEvent,
    >,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let outcome = crate::pipeline::sync::run(svc).await;
    emf::flush();
    let report = outcome?;
    Ok(serde_json::to_value(&report)?)
}

/// The HTTP API as the ingest door serves it: the same router as `pai serve`, with metrics
/// written after every response.
#[cfg(feature = "lambda-http")]
pub fn http_router(svc: Services) -> axum::Router {
    let state = crate::http::ApiState::new(svc, String::new(), None);
    with_metrics_flush(crate::http::router(state))
}

/// What the chat door's public function URL serves: `POST /chat` and `/health` only.
#[cfg(all(feature = "lambda-http", feature = "chat"))]
pub fn chat_router(svc: wire::ChatServices) -> axum::Router {
    let state = crate::http::ApiState::new(svc, String::new(), None);
    with_metrics_flush(crate::http::chat_router(state))
}

#[cfg(feature = "lambda-http")]
fn with_metrics_flush(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(
        |response: axum::response::Response| async move {
            emf::flush();
            response
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_sdk_config_comes_from_lambdas_variables() {
        let vars = HashMap::from([
            ("AWS_REGION", "eu-central-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        ]);
        let config = sdk_config(|k| vars.get(k).map(|v| v.to_string()));
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-central-1"));
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:4566"));
        assert!(config.credentials_provider().is_some());
        let bare = sdk_config(|k| (k == "AWS_ENDPOINT_URL").then(String::new));
        assert_eq!(bare.region(), None);
        assert_eq!(
            bare.endpoint_url(),
            None,
            "an empty endpoint is no endpoint"
        );
    }
}
