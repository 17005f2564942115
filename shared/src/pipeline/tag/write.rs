//! Writing a suggestion back, for the stage and for review alike: the three-way merge that
//! plans the PATCH, and the objects created on the way.

use crate::config::FieldMode;
use crate::domain::{Document, DocumentPatch, Field, ObjectKind, Suggestion, Taxonomy};
use crate::pipeline::{Core, PipelineError, Writer};

/// The tag id of a named tag, if it exists.
pub(super) fn tag_id(taxonomy: &Taxonomy, name: Option<&str>) -> Option<u64> {
    name.and_then(|n| taxonomy.find(ObjectKind::Tag, n))
        .map(|t| t.id)
}

/// The id of a named object, created (matching "none") when missing and allowed.
pub(super) async fn object_id(
    svc: &Core,
    writer: &Writer,
    taxonomy: &Taxonomy,
    kind: ObjectKind,
    name: &str,
) -> Result<u64, PipelineError> {
    svc.object_id(writer, taxonomy, kind, name).await
}

/// The PATCH for a suggestion, by three-way merge: `base` is the document the model saw,
/// `fresh` what Paperless shows right before writing. A field the user changed in between is
/// left as the user set it (and named in the third value); the others follow the field modes.
/// Sets (tags, custom fields) are merged into the fresh ones. Returns the PATCH, the values
/// it replaces (for undo) and the fields kept as the user set them.
pub(super) async fn plan(
    svc: &Core,
    writer: &Writer,
    base: &Document,
    fresh: &Document,
    s: &Suggestion,
    taxonomy: &Taxonomy,
) -> Result<(DocumentPatch, DocumentPatch, Vec<String>), PipelineError> {
    let policy = &svc.settings.policy;
    let mut patch = DocumentPatch::default();
    let mut previous = DocumentPatch::default();
    let mut kept = Vec::new();
    let write = |field: Field, is_empty: bool| match policy.mode(field) {
        FieldMode::Overwrite => true,
        FieldMode::IfEmpty => is_empty,
        FieldMode::Never => false,
    };
    let date = |d: &Option<String>| d.as_deref().map(|d| d.chars().take(10).collect::<String>());
    // A field the user changed since the model's read is named in `kept` and left alone.
    fn user_changed(kept: &mut Vec<String>, name: &str, changed: bool) -> bool {
        if changed {
            kept.push(name.to_string());
        }
        changed
    }
    if let Some(t) = &s.title
        && !user_changed(&mut kept, "title", base.title != fresh.title)
        && write(Field::Title, fresh.title.trim().is_empty())
        && *t != fresh.title
    {
        patch.title = Some(t.clone());
        previous.title = Some(fresh.title.clone());
    }
    if let Some(c) = &s.correspondent
        && !user_changed(
            &mut kept,
            "correspondent",
            base.correspondent != fresh.correspondent,
        )
        && write(Field::Correspondent, fresh.correspondent.is_none())
    {
        let id = object_id(svc, writer, taxonomy, ObjectKind::Correspondent, c).await?;
        if fresh.correspondent != Some(id) {
            patch.correspondent = Some(Some(id));
            previous.correspondent = Some(fresh.correspondent);
        }
    }
    if let Some(d) = &s.document_type
        && !user_changed(
            &mut kept,
            "document_type",
            base.document_type != fresh.document_type,
        )
        && write(Field::DocumentType, fresh.document_type.is_none())
    {
        let id = object_id(svc, writer, taxonomy, ObjectKind::DocumentType, d).await?;
        if fresh.document_type != Some(id) {
            patch.document_type = Some(Some(id));
            previous.document_type = Some(fresh.document_type);
        }
    }
    if let Some(c) = &s.created
        && !user_changed(
            &mut kept,
            "created",
            date(&base.created) != date(&fresh.created),
        )
        && write(Field::Created, fresh.created.is_none())
        && date(&fresh.created).as_deref() != Some(c.as_str())
    {
        patch.created = Some(Some(c.clone()));
        previous.created = Some(fresh.created.clone());
    }
    // Tags: what the document has now, plus the suggestion and the processed tag, minus the
    // trigger, failed and review tags. A suggested tag the user removed meanwhile stays removed;
    // nothing else is ever removed.
    let mut tags: Vec<u64> = fresh.tags.clone();
    let mut names: Vec<String> = s.tags.clone();
    names.push(policy.processed_tag.clone());
    for name in names {
        let existing = taxonomy.find(ObjectKind::Tag, &name).map(|t| t.id);
        if existing.is_some_and(|id| base.tags.contains(&id) && !fresh.tags.contains(&id)) {
            kept.push(format!("tag {name:?} (removed by the user)"));
            continue;
        }
        let id = match existing {
            Some(id) => id,
            None => object_id(svc, writer, taxonomy, ObjectKind::Tag, &name).await?,
        };
        if !tags.contains(&id) {
            tags.push(id);
        }
    }
    let drop = [
        tag_id(taxonomy, policy.trigger_tag.as_deref()),
        tag_id(taxonomy, Some(&policy.failed_tag)),
        tag_id(taxonomy, Some(&svc.settings.review_tag)),
    ];
    tags.retain(|id| !drop.contains(&Some(*id)));
    if tags != fresh.tags {
        patch.tags = Some(tags);
        previous.tags = Some(fresh.tags.clone());
    }
    if let Some(path) = s
        .storage_path
        .as_deref()
        .and_then(|p| taxonomy.storage_paths.iter().find(|x| x.name == p))
        && !user_changed(
            &mut kept,
            "storage_path",
            base.storage_path != fresh.storage_path,
        )
        && write(Field::StoragePath, fresh.storage_path.is_none())
        && fresh.storage_path != Some(path.id)
    {
        patch.storage_path = Some(Some(path.id));
        previous.storage_path = Some(fresh.storage_path);
    }
    // Custom fields: PATCH replaces the whole set, so merge into what the document has now.
    let cf_mode = policy.mode(Field::CustomFields);
    if cf_mode != FieldMode::Never && !s.custom_fields.is_empty() {
        let value_in = |doc: &Document, id: u64| {
            doc.custom_fields
                .iter()
                .find(|f| f.field == id)
                .map(|f| f.value.clone())
        };
        let mut fields = fresh.custom_fields.clone();
        for (name, value) in &s.custom_fields {
            let Some(def) = taxonomy.custom_fields.iter().find(|f| f.name == *name) else {
                continue;
            };
            if value_in(base, def.id) != value_in(fresh, def.id) {
                kept.push(format!("custom field {name:?}"));
                continue;
            }
            match fields.iter_mut().find(|f| f.field == def.id) {
                Some(existing) if cf_mode == FieldMode::Overwrite || existing.value.is_null() => {
                    existing.value = value.clone()
                }
                Some(_) => {}
                None => fields.push(crate::domain::CustomFieldValue {
                    field: def.id,
                    value: value.clone(),
                }),
            }
        }
        if fields != fresh.custom_fields {
            patch.custom_fields = Some(fields);
            previous.custom_fields = Some(fresh.custom_fields.clone());
        }
    }
    Ok((patch, previous, kept))
}
