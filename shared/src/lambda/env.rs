//! The environment a function starts from: its variables, its secrets from SSM, and a record of
//! every name the code read, so a test can hold the template to exactly what the code needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::{Function, StartError};
use crate::config::ConfigError;

/// Settings only `pai` has (its data folder, its listener, its in-process workers and timer):
/// on Lambda these read as unset, whatever the environment says. `TZ` is reserved on Lambda
/// (the runtime sets `:UTC` and a template may not change it): functions judge dates in UTC.
const PAI_ONLY: &[&str] = &[
    "DATA_DIR",
    "PORT",
    "BIND",
    "WORKERS",
    "PUBLIC_URL",
    "SYNC_INTERVAL_MINUTES",
    "TZ",
];

/// Every secret a function may be given; they come from SSM, never from the template.
pub const SECRET_NAMES: &[&str] = &[
    "WEBHOOK_SECRET",
    "API_KEYS",
    "PAPERLESS_TOKEN",
    "LLM_API_KEY",
    "EMBEDDING_API_KEY",
];

/// Where the secrets live in Parameter Store unless `SECRETS_PREFIX` says otherwise.
pub const DEFAULT_SECRETS_PREFIX: &str = "/paperless-ai/";

pub struct Env {
    vars: HashMap<String, String>,
    secrets: HashMap<String, String>,
    read: Mutex<BTreeSet<String>>,
}

impl Env {
    pub fn from_map(vars: HashMap<String, String>) -> Env {
        Env {
            vars,
            secrets: HashMap::new(),
            read: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn from_process() -> Env {
        Env::from_map(std::env::vars().collect())
    }

    /// Adds the secrets read from SSM; they win over variables of the same name (which only
    /// a local run, e.g. `cargo lambda watch`, would set).
    pub fn add_secrets(&mut self, secrets: HashMap<String, String>) {
        self.secrets.extend(secrets);
    }

    pub fn get(&self, name: &str) -> Option<String> {
        if PAI_ONLY.contains(&name) {
            return None;
        }
        if SECRET_NAMES.contains(&name) {
            return self
                .secrets
                .get(name)
                .or_else(|| self.vars.get(name))
                .cloned();
        }
        self.read
            .lock()
            .expect("env record")
            .insert(name.to_string());
        self.vars.get(name).cloned()
    }

    /// A variable the function cannot run without (the template sets it).
    pub fn require(&self, name: &'static str) -> Result<String, StartError> {
        self.get(name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                StartError::Config(ConfigError {
                    var: name,
                    message: "required by this function (the SAM template sets it)".into(),
                })
            })
    }

    pub fn secrets_prefix(&self) -> String {
        self.get("SECRETS_PREFIX")
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_SECRETS_PREFIX.into())
    }

    /// The secret names to fetch: `SECRETS` (comma-separated), or the function's own list.
    pub fn secret_names(&self, function: Function) -> Vec<String> {
        match self.get("SECRETS") {
            Some(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => function.secrets().iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The names whose value came from SSM (for the status page's sources).
    pub fn secrets_from_ssm(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    /// Every non-secret variable name read so far.
    pub fn names_read(&self) -> BTreeSet<String> {
        self.read.lock().expect("env record").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn pai_only_settings_read_as_unset_and_secrets_are_not_recorded() {
        let mut e = env(&[("PORT", "9"), ("PAPERLESS_TOKEN", "from-env"), ("A", "1")]);
        e.add_secrets([("PAPERLESS_TOKEN".to_string(), "from-ssm".to_string())].into());
        assert_eq!(e.get("PORT"), None);
        assert_eq!(e.get("PAPERLESS_TOKEN").as_deref(), Some("from-ssm"));
        assert_eq!(e.get("A").as_deref(), Some("1"));
        assert_eq!(e.get("B"), None);
        assert_eq!(
            e.names_read(),
            ["A", "B"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn secret_names_default_to_the_function_and_require_names_the_variable() {
        let e = env(&[("SECRETS", " LLM_API_KEY ,,X "), ("EMPTY", " ")]);
        assert_eq!(e.secret_names(Function::Tag), ["LLM_API_KEY", "X"]);
        assert_eq!(env(&[]).secret_names(Function::Sync), ["PAPERLESS_TOKEN"]);
        assert_eq!(env(&[]).secrets_prefix(), DEFAULT_SECRETS_PREFIX);
        let err = e.require("EMPTY").unwrap_err().to_string();
        assert!(err.starts_with("EMPTY: required"), "{err}");
    }
}
