//! What the configured models are called — the chat model's name, the embedder's space and
//! its dimension — from the settings alone, without building a client: the chunk and sync
//! functions record these and size the vector index by them, though they call no model and
//! link no provider. The providers name themselves through the same functions, and a test
//! checks both ways agree for every provider.

use crate::config::{ConfigError, ModelSettings, Provider, Settings};
use crate::ports::{ChatModel, Embedder};

use super::lexical::DEFAULT_DIMENSION;
use super::marking::Marking;

/// The names a function records on jobs and in guards, and the index's dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelNames {
    /// The chat model, e.g. `openai/gpt-4o-mini` (`ChatModel::name`).
    pub model: String,
    /// The embedding space, e.g. `openai/text-embedding-3-small/1536` (`Embedder::space`).
    pub space: String,
    pub dimension: usize,
}

impl ModelNames {
    /// The names the built models give themselves must be these (which key what chunk and
    /// sync write and drop): a mismatch is a start error, not vectors in the wrong space.
    pub fn check(&self, model: &dyn ChatModel, embedder: &dyn Embedder) -> Result<(), ConfigError> {
        let built = ModelNames {
            model: model.name().to_string(),
            space: embedder.space().to_string(),
            dimension: embedder.dimension(),
        };
        match built == *self {
            true => Ok(()),
            false => Err(ConfigError {
                var: "EMBEDDING_MODEL",
                message: format!("the settings name {self:?}, the models built are {built:?}"),
            }),
        }
    }
}

pub const OPENAI_CHAT_MODEL: &str = "gpt-4o-mini";
pub const OPENAI_EMBEDDING_MODEL: &str = "text-embedding-3-small";
pub const OLLAMA_CHAT_MODEL: &str = "qwen2.5:7b";
pub const OLLAMA_EMBEDDING_MODEL: &str = "nomic-embed-text";

/// A chat model's name: its provider and model.
pub fn chat_name(provider: &str, model: &str) -> String {
    format!("{provider}/{model}")
}

/// An embedding space: vectors of different models, sizes or document markings never mix.
pub fn space(provider: &str, model: &str, dimension: usize, marking: Option<&Marking>) -> String {
    let suffix = marking.map(Marking::space_suffix).unwrap_or_default();
    format!("{provider}/{model}/{dimension}{suffix}")
}

/// The vector size of well-known embedding models served over OpenAI-compatible APIs.
pub fn known_dimensions(model: &str) -> Option<usize> {
    match model {
        "text-embedding-3-small" | "text-embedding-ada-002" => Some(1536),
        "text-embedding-3-large" => Some(3072),
        "nomic-embed-text" => Some(768),
        "mxbai-embed-large" => Some(1024),
        "all-minilm" => Some(384),
        "multilingual-e5-small" | "intfloat/multilingual-e5-small" | "e5-small-v2" => Some(384),
        "multilingual-e5-base" | "intfloat/multilingual-e5-base" | "e5-base-v2" => Some(768),
        "multilingual-e5-large" | "intfloat/multilingual-e5-large" | "e5-large-v2" => Some(1024),
        _ => None,
    }
}

/// The dimension an OpenAI-compatible or Ollama embedder produces: the configured one, else
/// the model's known size.
pub fn http_dimension(model: &str, dimensions: Option<usize>) -> Result<usize, String> {
    dimensions
        .or_else(|| known_dimensions(model))
        .ok_or_else(|| {
            format!("the size of embedding model {model:?} is unknown: set EMBEDDING_DIMENSIONS")
        })
}

/// How the settings mark queries and documents for the model (prefixes, input types).
pub fn marking(e: &ModelSettings, default_model: &str) -> Marking {
    Marking::new(
        e.model.as_deref().unwrap_or(default_model),
        e.query_prefix.as_deref(),
        e.document_prefix.as_deref(),
        e.input_types.clone(),
    )
}

pub(crate) fn config(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Ollama's embed API takes no input type.
pub fn check_ollama_embedding(e: &ModelSettings) -> Result<(), ConfigError> {
    match e.input_types {
        Some(_) => Err(config(
            "EMBEDDING_INPUT_TYPES",
            "Ollama's embed API takes no input type: use EMBEDDING_QUERY_PREFIX / EMBEDDING_DOCUMENT_PREFIX",
        )),
        None => Ok(()),
    }
}

/// The names of the models the settings configure, as the built providers report them.
pub fn of(settings: &Settings) -> Result<ModelNames, ConfigError> {
    let llm = &settings.llm;
    let model_or = |default: &str| llm.model.clone().unwrap_or_else(|| default.to_string());
    let model = match llm.provider {
        Provider::Lexical => "lexical".to_string(),
        Provider::OpenAi => chat_name("openai", &model_or(OPENAI_CHAT_MODEL)),
        Provider::Ollama => chat_name("ollama", &model_or(OLLAMA_CHAT_MODEL)),
        Provider::Bedrock => chat_name("bedrock", &model_or(bedrock::DEFAULT_CHAT_MODEL)),
    };
    let e = &settings.embedding;
    let (space, dimension) = match e.provider {
        Provider::Lexical => {
            let d = e.dimensions.unwrap_or(DEFAULT_DIMENSION);
            (space("lexical", "hash-ngram", d, None), d)
        }
        Provider::OpenAi | Provider::Ollama => {
            let (provider, default) = match e.provider {
                Provider::OpenAi => ("openai", OPENAI_EMBEDDING_MODEL),
                _ => {
                    check_ollama_embedding(e)?;
                    ("ollama", OLLAMA_EMBEDDING_MODEL)
                }
            };
            let name = e.model.as_deref().unwrap_or(default);
            let d = http_dimension(name, e.dimensions)
                .map_err(|m| config("EMBEDDING_DIMENSIONS", m))?;
            (space(provider, name, d, Some(&marking(e, default))), d)
        }
        Provider::Bedrock => {
            let name = e
                .model
                .as_deref()
                .unwrap_or(bedrock::DEFAULT_EMBEDDING_MODEL);
            let (_, d) = bedrock::embedding(name, e.dimensions)?;
            (space("bedrock", name, d, None), d)
        }
    };
    Ok(ModelNames {
        model,
        space,
        dimension,
    })
}

/// Bedrock's models as far as naming and sizing go (the client is `providers::bedrock`).
pub mod bedrock {
    use crate::config::ConfigError;

    /// Claude Haiku 4.5 through the global cross-region inference profile: reachable from
    /// every commercial region without naming one (the bare model id needs a profile). For
    /// data that must stay in a geography use its profile instead, e.g.
    /// `eu.anthropic.claude-haiku-4-5-20251001-v1:0`.
    pub const DEFAULT_CHAT_MODEL: &str = "global.anthropic.claude-haiku-4-5-20251001-v1:0";
    pub const DEFAULT_EMBEDDING_MODEL: &str = "amazon.titan-embed-text-v2:0";

    /// The embedding model families InvokeModel is spoken to in.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Family {
        /// Titan Text Embeddings v2: `{inputText, dimensions, normalize}`, one text per call.
        TitanV2,
        /// Titan Text Embeddings v1 (G1): `{inputText}`, 1536 dimensions.
        TitanV1,
        /// Cohere Embed v3 (English, multilingual): up to 96 texts per call, 1024 dimensions.
        CohereV3,
        /// Cohere Embed v4: like v3, with a choice of output dimensions.
        CohereV4,
    }

    impl Family {
        pub fn of(model: &str) -> Option<Family> {
            let m = model.to_ascii_lowercase();
            if m.contains("amazon.titan-embed-text-v2") {
                Some(Family::TitanV2)
            } else if m.contains("amazon.titan-embed-text-v1")
                || m.contains("amazon.titan-embed-g1")
            {
                Some(Family::TitanV1)
            } else if m.contains("cohere.embed-english-v3")
                || m.contains("cohere.embed-multilingual-v3")
            {
                Some(Family::CohereV3)
            } else if m.contains("cohere.embed-v4") {
                Some(Family::CohereV4)
            } else {
                None
            }
        }

        /// The sizes the model can produce, the default first.
        pub fn dimensions(self) -> &'static [usize] {
            match self {
                Family::TitanV2 => &[1024, 512, 256],
                Family::TitanV1 => &[1536],
                Family::CohereV3 => &[1024],
                Family::CohereV4 => &[1536, 1024, 512, 256],
            }
        }
    }

    /// The family of a Bedrock embedding model and the dimension it is asked for.
    pub fn embedding(
        model: &str,
        dimensions: Option<usize>,
    ) -> Result<(Family, usize), ConfigError> {
        let family = Family::of(model).ok_or_else(|| ConfigError {
            var: "EMBEDDING_MODEL",
            message: format!(
                "bedrock embeds with Amazon Titan Text Embeddings (amazon.titan-embed-text-v2:0, amazon.titan-embed-text-v1) or Cohere Embed (cohere.embed-english-v3, cohere.embed-multilingual-v3, cohere.embed-v4:0), not {model:?}"
            ),
        })?;
        let allowed = family.dimensions();
        let dimension = dimensions.unwrap_or(allowed[0]);
        if !allowed.contains(&dimension) {
            let list: Vec<String> = allowed.iter().map(usize::to_string).collect();
            return Err(ConfigError {
                var: "EMBEDDING_DIMENSIONS",
                message: format!(
                    "{model} produces vectors of {} dimensions, not {dimension}",
                    list.join(", ")
                ),
            });
        }
        Ok((family, dimension))
    }
}

#[cfg(all(test, feature = "clients", feature = "bedrock", feature = "local"))]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::providers::{AwsConfig, chat_model, embedder};

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_map(&map).unwrap()
    }

    /// What chunk and sync derive from the settings is what the built providers report, for
    /// every provider, default and marking: otherwise chunk would write vectors keyed by a
    /// space embed never fills.
    #[test]
    fn the_settings_name_the_models_as_the_built_providers_do() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("EMBEDDING_DIMENSIONS", "512")],
            &[("LLM_PROVIDER", "openai"), ("LLM_API_KEY", "k")],
            &[
                ("LLM_PROVIDER", "openai"),
                ("LLM_BASE_URL", "http://127.0.0.1:9/v1"),
                ("LLM_MODEL", "local-chat"),
                ("EMBEDDING_MODEL", "multilingual-e5-small"),
            ],
            &[
                ("LLM_PROVIDER", "openai"),
                ("LLM_BASE_URL", "http://127.0.0.1:9/v1"),
                ("EMBEDDING_MODEL", "some-embedder"),
                ("EMBEDDING_DIMENSIONS", "256"),
                ("EMBEDDING_QUERY_PREFIX", "q: "),
                ("EMBEDDING_DOCUMENT_PREFIX", "d: "),
            ],
            &[
                ("LLM_PROVIDER", "openai"),
                ("LLM_BASE_URL", "http://127.0.0.1:9/v1"),
                ("EMBEDDING_MODEL", "embed-multilingual-v3.0"),
                ("EMBEDDING_DIMENSIONS", "1024"),
                ("EMBEDDING_INPUT_TYPES", "search_query,search_document"),
            ],
            &[
                ("LLM_PROVIDER", "ollama"),
                ("LLM_BASE_URL", "http://127.0.0.1:9"),
            ],
            &[
                ("LLM_PROVIDER", "ollama"),
                ("LLM_BASE_URL", "http://127.0.0.1:9"),
                ("LLM_MODEL", "llama3.1:8b"),
                ("EMBEDDING_MODEL", "mxbai-embed-large"),
            ],
            &[("LLM_PROVIDER", "bedrock")],
            &[
                ("LLM_PROVIDER", "bedrock"),
                ("EMBEDDING_MODEL", "cohere.embed-v4:0"),
                ("EMBEDDING_DIMENSIONS", "512"),
            ],
            &[
                ("LLM_PROVIDER", "bedrock"),
                ("EMBEDDING_MODEL", "cohere.embed-multilingual-v3"),
            ],
            &[
                ("LLM_PROVIDER", "bedrock"),
                ("EMBEDDING_PROVIDER", "lexical"),
                ("EMBEDDING_DIMENSIONS", "128"),
            ],
        ];
        let aws = AwsConfig::DefaultChain;
        for vars in cases {
            let s = settings(vars);
            let names = of(&s).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
            let model = chat_model(&s, &aws).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
            let embedder = embedder(&s, &aws).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
            names
                .check(model.as_ref(), embedder.as_ref())
                .unwrap_or_else(|e| panic!("{vars:?}: {e}"));
        }
    }

    /// A mismatch is refused, so the check above can fail.
    #[test]
    fn names_other_than_the_models_are_a_start_error() {
        let s = settings(&[]);
        let aws = AwsConfig::DefaultChain;
        let (model, embedder) = (chat_model(&s, &aws).unwrap(), embedder(&s, &aws).unwrap());
        let mut names = of(&s).unwrap();
        names.dimension += 1;
        let err = names.check(model.as_ref(), embedder.as_ref()).unwrap_err();
        assert_eq!(err.var, "EMBEDDING_MODEL");
    }

    /// What cannot be named cannot start either: the same errors as building the provider.
    #[test]
    fn unnamed_sizes_and_unknown_models_are_config_errors() {
        let unknown = settings(&[
            ("LLM_PROVIDER", "openai"),
            ("LLM_BASE_URL", "http://127.0.0.1:9/v1"),
            ("EMBEDDING_MODEL", "my-own-embedder"),
        ]);
        assert_eq!(of(&unknown).unwrap_err().var, "EMBEDDING_DIMENSIONS");
        let titan = settings(&[("LLM_PROVIDER", "bedrock"), ("EMBEDDING_DIMENSIONS", "300")]);
        assert_eq!(of(&titan).unwrap_err().var, "EMBEDDING_DIMENSIONS");
        let other = settings(&[("LLM_PROVIDER", "bedrock"), ("EMBEDDING_MODEL", "x.y")]);
        assert_eq!(of(&other).unwrap_err().var, "EMBEDDING_MODEL");
        let ollama_types = settings(&[
            ("LLM_PROVIDER", "ollama"),
            ("LLM_BASE_URL", "http://127.0.0.1:9"),
            ("EMBEDDING_INPUT_TYPES", "a,b"),
        ]);
        assert_eq!(of(&ollama_types).unwrap_err().var, "EMBEDDING_INPUT_TYPES");
    }
}
