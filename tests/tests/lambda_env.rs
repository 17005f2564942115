//! The environment contract between the code and `template.yaml`: every variable a function's
//! code reads is set for it by the template, every variable the template sets is read, and the
//! secrets it may fetch are exactly the ones its IAM policy allows.

use std::collections::{BTreeSet, HashMap};

use pai_tests::aws_stack::Stack;
use pai_tests::moto::{MotoServer, unique};
use pai_tests::template::{default_env, template_env};
use shared::lambda::{Env, Function, load, services};

fn offline_sdk() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build()
}

/// The template's defaults, with values where the template has references (resource names).
fn template_vars(function: Function) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = default_env(function.name())
        .into_iter()
        .map(|(k, v)| {
            let v = if v.starts_with('<') {
                format!("https://example.test/{}", v.trim_matches(['<', '>']))
            } else {
                v
            };
            (k, v)
        })
        .collect();
    vars.insert("PAPERLESS_URL".into(), "http://127.0.0.1:9".into());
    vars
}

/// The template's defaults, and the function's secrets stored in SSM (on moto) under a prefix
/// of this test's own.
async fn template_defaults(moto: &MotoServer, function: Function) -> Env {
    let prefix = format!("/{}/", unique("env"));
    let secrets: Vec<(&str, &str)> = function
        .secrets()
        .iter()
        .map(|s| (*s, "a-secret-of-enough-length"))
        .collect();
    Stack::put_secrets(moto, &prefix, &secrets).await;
    let mut vars = template_vars(function);
    vars.insert("SECRETS_PREFIX".into(), prefix);
    Env::from_map(vars)
}

#[tokio::test]
async fn every_function_reads_exactly_what_the_template_sets() {
    let moto = MotoServer::shared();
    let sdk = moto.sdk_config().await;
    for function in Function::ALL {
        let mut env = template_defaults(&moto, function).await;
        if let Err(e) = load(function, &sdk, &mut env).await {
            panic!(
                "{} does not start on the template's defaults: {e}",
                function.name()
            );
        }
        let read = env.names_read();
        // The OpenTelemetry variables are read by the SDK's exporter from the process
        // environment when the subscriber is set up (shared/src/telemetry.rs), not through
        // `Env` by `load`.
        let set: BTreeSet<String> = template_env(function.name())
            .into_iter()
            .filter(|name| !name.starts_with("OTEL_"))
            .collect();
        let unset: Vec<_> = read.difference(&set).collect();
        let unread: Vec<_> = set.difference(&read).collect();
        assert!(
            unset.is_empty(),
            "{} reads variables the template does not set: {unset:?}",
            function.name()
        );
        assert!(
            unread.is_empty(),
            "the template sets variables {} never reads: {unread:?}",
            function.name()
        );
    }
}

#[test]
fn secrets_fetched_are_the_ones_the_template_names() {
    for function in Function::ALL {
        let env = default_env(function.name());
        let named: BTreeSet<&str> = env
            .get("SECRETS")
            .map(|s| s.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let used: BTreeSet<&str> = function.secrets().iter().copied().collect();
        assert_eq!(named, used, "SECRETS of {}", function.name());
    }
}

#[test]
fn a_missing_resource_names_its_variable() {
    let mut vars: HashMap<String, String> = default_env("embed").into_iter().collect();
    vars.remove("CACHE_TABLE");
    let err = services(Function::Embed, &offline_sdk(), &Env::from_map(vars))
        .err()
        .expect("embed needs its cache table")
        .to_string();
    assert!(err.starts_with("CACHE_TABLE:"), "{err}");
}

/// A function binds the cache table exactly when it has grants on it: its wiring asks for
/// `CACHE_TABLE` (and fails without it) only then.
#[test]
fn only_functions_with_cache_grants_bind_the_cache() {
    for function in Function::ALL {
        let mut vars = template_vars(function);
        vars.remove("CACHE_TABLE");
        for secret in function.secrets() {
            vars.insert(secret.to_string(), "a-secret-of-enough-length".into());
        }
        let outcome = services(function, &offline_sdk(), &Env::from_map(vars));
        let wants_cache = matches!(&outcome, Err(e) if e.to_string().starts_with("CACHE_TABLE:"));
        if !wants_cache && let Err(e) = &outcome {
            panic!("{} does not start: {e}", function.name());
        }
        assert_eq!(
            wants_cache,
            !function.cache_grants().is_empty(),
            "{}",
            function.name()
        );
    }
}

/// Fail closed: the two functions whose routes anyone can reach refuse to start when their
/// `API_KEYS` secret is missing (forgotten, or a wrong SecretsPrefix), naming the secret.
#[tokio::test]
async fn ingest_and_chat_do_not_start_without_api_keys() {
    let moto = MotoServer::shared();
    let sdk = moto.sdk_config().await;
    for function in [Function::Ingest, Function::Chat] {
        let prefix = format!("/{}/", unique("nokeys"));
        let others: Vec<(&str, &str)> = function
            .secrets()
            .iter()
            .filter(|s| **s != "API_KEYS")
            .map(|s| (*s, "a-secret-of-enough-length"))
            .collect();
        Stack::put_secrets(&moto, &prefix, &others).await;
        let mut vars = template_vars(function);
        vars.insert("SECRETS_PREFIX".into(), prefix);
        let err = load(function, &sdk, &mut Env::from_map(vars))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} started without API_KEYS", function.name()))
            .to_string();
        assert!(err.starts_with("API_KEYS:"), "{}: {err}", function.name());
    }
}

/// `ChatAuth=iam` puts AWS_IAM on the function URL: then chat starts without keys (AWS has
/// checked the caller's signature before the function runs); any other value stops it.
#[tokio::test]
async fn chat_starts_without_keys_only_under_iam_auth() {
    let moto = MotoServer::shared();
    let sdk = moto.sdk_config().await;
    let mut vars = template_vars(Function::Chat);
    vars.insert("SECRETS_PREFIX".into(), format!("/{}/", unique("nokeys")));
    vars.insert("API_AUTH".into(), "iam".into());
    let svc = load(Function::Chat, &sdk, &mut Env::from_map(vars.clone()))
        .await
        .expect("chat starts under IAM auth");
    assert_eq!(svc.core().settings.keyless, shared::config::Keyless::Iam);
    vars.insert("API_AUTH".into(), "iam-please".into());
    let err = load(Function::Chat, &sdk, &mut Env::from_map(vars))
        .await
        .err()
        .expect("a bad API_AUTH stops the start")
        .to_string();
    assert!(err.starts_with("API_AUTH:"), "{err}");
}
