//! What the Paperless token may do for the configured policy (`pai check`, and one line at
//! start-up): a least-privilege token must fail loudly here, once, rather than quietly on every
//! document. Global permissions come from `GET /api/ui_settings/`; object permissions (a
//! document its owner did not share) are per document and only named.

use serde::Serialize;

use super::{Core, PipelineError};
use crate::config::{FieldMode, Settings};
use crate::domain::{Field, ObjectKind};
use crate::ports::TokenUser;

/// One permission the policy uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLine {
    pub permission: String,
    pub granted: bool,
    /// Without it nothing works (as opposed to one feature being off).
    pub required: bool,
    /// What `pai` uses it for, and what happens without it.
    pub needed_for: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessReport {
    pub user: TokenUser,
    pub lines: Vec<AccessLine>,
}

impl AccessReport {
    /// Every required permission is granted.
    pub fn ok(&self) -> bool {
        self.lines.iter().all(|l| l.granted || !l.required)
    }

    /// One line for the start-up log.
    pub fn summary(&self) -> String {
        let missing: Vec<&str> = self
            .lines
            .iter()
            .filter(|l| !l.granted)
            .map(|l| l.permission.as_str())
            .collect();
        let who = format!(
            "Paperless token of {:?}{}",
            self.user.username,
            if self.user.is_superuser {
                " (superuser)"
            } else {
                ""
            }
        );
        if missing.is_empty() {
            format!("{who}: may do everything the policy needs")
        } else {
            format!(
                "{who}: lacks {} ({}; see `pai check`)",
                missing.join(", "),
                if self.ok() {
                    "some features are off"
                } else {
                    "documents will fail"
                }
            )
        }
    }
}

/// The permissions the settings' policy uses, checked against the token's user.
pub fn report(user: TokenUser, settings: &Settings) -> AccessReport {
    let policy = &settings.policy;
    let mut lines = Vec::new();
    let mut line = |permission: &str, required: bool, needed_for: String| {
        lines.push(AccessLine {
            permission: permission.to_string(),
            granted: user.may(permission),
            required,
            needed_for,
        });
    };
    line(
        "view_document",
        true,
        "read documents and their text".into(),
    );
    line(
        "change_document",
        true,
        format!(
            "write suggestions back and set {:?} / {:?}{}",
            policy.processed_tag,
            policy.failed_tag,
            if policy.review_mode {
                format!(" / {:?}", settings.review_tag)
            } else {
                String::new()
            }
        ),
    );
    line(
        "view_tag",
        true,
        "read tags (the processed tag, include/exclude tags, tagging)".into(),
    );
    line(
        "add_tag",
        !policy.restrict.contains(&ObjectKind::Tag),
        format!(
            "create {:?} and the other control tags when missing{}",
            policy.processed_tag,
            if policy.restrict.contains(&ObjectKind::Tag) {
                ""
            } else {
                ", and new tags the model suggests"
            }
        ),
    );
    for (field, kind, model, what) in [
        (
            Field::Correspondent,
            ObjectKind::Correspondent,
            "correspondent",
            "correspondents",
        ),
        (
            Field::DocumentType,
            ObjectKind::DocumentType,
            "documenttype",
            "document types",
        ),
    ] {
        if policy.mode(field) == FieldMode::Never {
            continue;
        }
        line(
            &format!("view_{model}"),
            false,
            format!("choose {what} (without it: off, and chat cannot filter by them)"),
        );
        if !policy.restrict.contains(&kind) {
            line(
                &format!("add_{model}"),
                false,
                format!(
                    "create new {what} (without it: set RESTRICT_TO_EXISTING to choose existing ones only)"
                ),
            );
        }
    }
    if policy.mode(Field::CustomFields) != FieldMode::Never && !policy.custom_fields.is_empty() {
        line(
            "view_customfield",
            false,
            "fill CUSTOM_FIELDS (without it: off)".into(),
        );
    }
    if policy.mode(Field::StoragePath) != FieldMode::Never {
        line(
            "view_storagepath",
            false,
            "choose storage paths (without it: off)".into(),
        );
    }
    AccessReport { user, lines }
}

/// Asks Paperless who the token is and checks it against the policy.
pub async fn check(svc: &Core) -> Result<AccessReport, PipelineError> {
    let paperless = svc
        .paperless
        .as_ref()
        .ok_or_else(|| PipelineError::Fail("PAPERLESS_URL is not configured".into()))?;
    let user = paperless.token_user().await?;
    Ok(report(user, &svc.settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn only_what_the_policy_uses_is_asked_for() {
        let restricted = TokenUser {
            id: 2,
            username: "scanner".into(),
            permissions: [
                "view_document",
                "change_document",
                "view_tag",
                "add_tag",
                "view_correspondent",
                "add_correspondent",
                "view_documenttype",
                "add_documenttype",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        };
        let default = report(restricted.clone(), &settings(&[]));
        assert!(default.ok(), "{default:?}");
        assert!(default.lines.iter().all(|l| l.granted));
        assert!(
            !default
                .lines
                .iter()
                .any(|l| l.permission.contains("storagepath")
                    || l.permission.contains("customfield"))
        );
        let wide = report(
            restricted,
            &settings(&[
                ("TAG_FIELDS", "title,tags,custom_fields,storage_path"),
                ("CUSTOM_FIELDS", "Amount"),
            ]),
        );
        assert!(wide.ok(), "optional features only");
        assert!(
            wide.summary()
                .contains("view_customfield, view_storagepath"),
            "{}",
            wide.summary()
        );
        let reader = TokenUser {
            permissions: vec!["view_document".into(), "view_tag".into()],
            ..Default::default()
        };
        assert!(!report(reader, &settings(&[])).ok());
    }
}
