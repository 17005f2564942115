//! Secrets from SSM Parameter Store, read once per cold start: the template never holds them
//! (a plain CloudFormation parameter would show in the console and in every describe call).

use std::collections::HashMap;

use aws_sdk_ssm::Client;

use super::StartError;

/// GetParameters takes at most this many names per call.
const NAMES_PER_CALL: usize = 10;

/// Reads `prefix + name` for each name, decrypted. A parameter that does not exist is left
/// out (users set only the secrets they use; settings then say what is missing, by name).
pub async fn fetch(
    client: &Client,
    prefix: &str,
    names: &[String],
) -> Result<HashMap<String, String>, StartError> {
    let mut found = HashMap::new();
    for batch in names.chunks(NAMES_PER_CALL) {
        let reply = client
            .get_parameters()
            .set_names(Some(batch.iter().map(|n| format!("{prefix}{n}")).collect()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                StartError::Secrets(
                    aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
                )
            })?;
        for p in reply.parameters() {
            if let (Some(name), Some(value)) = (p.name(), p.value())
                && let Some(short) = name.strip_prefix(prefix)
            {
                found.insert(short.to_string(), value.to_string());
            }
        }
        let missing = reply.invalid_parameters();
        if !missing.is_empty() {
            tracing::info!(?missing, "secrets not set in Parameter Store");
        }
    }
    Ok(found)
}
