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

/// The template's defaults, with values where the template has references (resource names),
/// and the function's secrets stored in SSM (on moto) under a prefix of this test's own.
async fn template_defaults(moto: &MotoServer, function: Function) -> Env {
    let prefix = format!("/{}/", unique("env"));
    let secrets: Vec<(&str, &str)> = function
        .secrets()
        .iter()
        .map(|s| (*s, "a-secret-of-enough-length"))
        .collect();
    Stack::put_secrets(moto, &prefix, &secrets).await;
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
        let set: BTreeSet<String> = template_env(function.name());
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
