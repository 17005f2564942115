//! The tagging prompt, fitted to the model's budget in tokens (feature `tokens`).

use std::collections::BTreeSet;

use chrono::NaiveDate;

use crate::config::FieldMode;
use crate::domain::{Field, ObjectKind, TagInput, Taxonomy};
use crate::pipeline::{Core, PipelineError};
use crate::text::fit_head_tail;
use crate::text::fold;

use super::*;

/// What the model sees, and an estimate of the model tokens the call spends. The whole prompt
/// (instructions, taxonomy slice, document text) fits `MAX_INPUT_TOKENS` and, on Ollama, the
/// context (`OLLAMA_NUM_CTX`) less the reply; a large taxonomy gives up names before the
/// document gives up text below a floor.
pub fn prompt_input(
    svc: &Core,
    taxonomy: &Taxonomy,
    current_title: String,
    text: &str,
    text_tokens: Option<usize>,
    today: NaiveDate,
) -> Result<(TagInput, usize), PipelineError> {
    let settings = &svc.settings;
    let policy = &settings.policy;
    let control = control_tags(settings);
    // Only a taxonomy larger than a prompt's share needs the document's words.
    let content_words = std::cell::LazyCell::new(|| -> BTreeSet<String> {
        crate::text::words(text).into_iter().collect()
    });
    let mut limit = policy.max_input_tokens;
    if settings.llm.provider == crate::config::Provider::Ollama {
        limit =
            limit.min((settings.ollama_num_ctx as usize).saturating_sub(policy.max_output_tokens));
    }
    // Budgets are in the model's tokens; text is counted in cl100k tokens.
    let factor =
        crate::text::token_factor(settings.llm.model.as_deref().unwrap_or(&svc.names.model));
    let limit = (limit as f64 / factor) as usize;
    const TEXT_FLOOR: usize = 256;
    const MARGIN: usize = 32;
    // Counted once (by the chunk stage, when it is this text), whatever the taxonomy's size.
    let text_tokens = text_tokens.unwrap_or_else(|| crate::text::count_tokens(text));
    for cap in [MAX_NAMES_PER_KIND, 75, 40, 20, 10, 0] {
        let mut input = TagInput {
            current_title: current_title.clone(),
            content: String::new(),
            fields: policy.fields.iter().copied().collect(),
            tags: slice(taxonomy, ObjectKind::Tag, &content_words, cap)
                .into_iter()
                .filter(|t| !control.contains(&fold(t)))
                .collect(),
            correspondents: slice(taxonomy, ObjectKind::Correspondent, &content_words, cap),
            document_types: slice(taxonomy, ObjectKind::DocumentType, &content_words, cap),
            custom_fields: taxonomy
                .custom_fields
                .iter()
                .filter(|f| {
                    policy
                        .custom_fields
                        .iter()
                        .any(|n| fold(n) == fold(&f.name))
                })
                .cloned()
                .collect(),
            storage_paths: if policy.mode(Field::StoragePath) == FieldMode::Never {
                Vec::new()
            } else {
                taxonomy
                    .storage_paths
                    .iter()
                    .take(cap.max(1) * 2)
                    .map(|p| p.name.clone())
                    .collect()
            },
            restrict_tags: policy.restrict.contains(&ObjectKind::Tag),
            restrict_correspondents: policy.restrict.contains(&ObjectKind::Correspondent),
            restrict_document_types: policy.restrict.contains(&ObjectKind::DocumentType),
            taxonomy: taxonomy.clone(),
            today: today.to_string(),
        };
        let overhead = prompt_tokens(&input, policy.system_prompt.as_deref());
        let Some(room) = limit.checked_sub(overhead + MARGIN) else {
            continue;
        };
        if room < TEXT_FLOOR.min(text_tokens) && cap > 0 {
            continue;
        }
        if room == 0 {
            break;
        }
        let used = if text_tokens <= room {
            input.content = text.to_string();
            overhead + text_tokens
        } else {
            input.content = fit_head_tail(text, room);
            overhead + crate::text::count_tokens(&input.content)
        };
        let estimate = (used as f64 * factor) as usize + policy.max_output_tokens;
        return Ok((input, estimate));
    }
    Err(PipelineError::Fail(format!(
        "MAX_INPUT_TOKENS ({}) leaves no room for the document after the instructions{}",
        policy.max_input_tokens,
        if settings.llm.provider == crate::config::Provider::Ollama {
            " (OLLAMA_NUM_CTX less MAX_OUTPUT_TOKENS also bounds the prompt)"
        } else {
            ""
        }
    )))
}

/// Tokens of the tagging prompt without the document: instructions, taxonomy and schema.
pub(super) fn prompt_tokens(input: &TagInput, system_prompt: Option<&str>) -> usize {
    let messages = crate::providers::llm::tag_messages(input, system_prompt);
    let schema = crate::providers::llm::tag_schema(input);
    messages
        .iter()
        .map(|m| crate::text::count_tokens(&m.content) + 4)
        .sum::<usize>()
        + crate::text::count_tokens(&schema.to_string())
}

/// The names of one kind to show the model: all of a small taxonomy; for a large one, those
/// the document mentions first, then the most used.
pub(super) fn slice(
    taxonomy: &Taxonomy,
    kind: ObjectKind,
    content_words: &std::cell::LazyCell<BTreeSet<String>, impl FnOnce() -> BTreeSet<String>>,
    cap: usize,
) -> Vec<String> {
    let mut objects: Vec<_> = taxonomy.objects(kind).iter().collect();
    if objects.len() > cap {
        // Mentioned: by its whole name, or by one of its Paperless match words.
        let mentioned = |o: &crate::domain::TaxonomyObject| {
            crate::text::words(&o.name)
                .iter()
                .all(|w| content_words.contains(w))
                || crate::text::words(&o.match_words)
                    .iter()
                    .any(|w| w.len() > 2 && content_words.contains(w))
        };
        objects.sort_by_key(|o| (!mentioned(o), std::cmp::Reverse(o.document_count), o.id));
        objects.truncate(cap);
    }
    objects.into_iter().map(|o| o.name.clone()).collect()
}
