//! The `Embedder` port over a provider's one request: a provider says how it embeds texts of
//! one kind (documents or a query), and the port's two calls, with what every provider
//! checks of the reply, are written here once.

use async_trait::async_trait;

use super::marking::Marking;
use crate::ports::{EmbedKind, Embedder, ModelError, Usage};

/// An embedding model as its vectors are named: provider, model, dimension and how queries
/// and documents are marked, from which its space follows (`names::space`).
pub struct EmbeddingModel {
    provider: &'static str,
    name: String,
    dimension: usize,
    marking: Option<Marking>,
    space: String,
}

impl EmbeddingModel {
    pub fn new(
        provider: &'static str,
        name: String,
        dimension: usize,
        marking: Option<Marking>,
    ) -> EmbeddingModel {
        let space = super::names::space(provider, &name, dimension, marking.as_ref());
        EmbeddingModel {
            provider,
            name,
            dimension,
            marking,
            space,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn space(&self) -> &str {
        &self.space
    }

    /// How queries and documents are marked from now on; the space follows.
    pub fn set_marking(&mut self, marking: Marking) {
        self.space = super::names::space(self.provider, &self.name, self.dimension, Some(&marking));
        self.marking = Some(marking);
    }

    /// The text as the model should see it.
    pub fn text(&self, kind: EmbedKind, text: &str) -> String {
        match &self.marking {
            Some(marking) => marking.text(kind, text),
            None => text.to_string(),
        }
    }

    /// The `input_type` to send, if any.
    pub fn input_type(&self, kind: EmbedKind) -> Option<&str> {
        self.marking.as_ref()?.input_type(kind)
    }
}

/// What a model provider's embedder implements; [`Embedder`] follows.
#[async_trait]
pub trait EmbeddingRequest: Send + Sync {
    fn model(&self) -> &EmbeddingModel;
    /// One call for `texts` (never empty), all of one kind.
    async fn embed_as(
        &self,
        kind: EmbedKind,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, Usage), ModelError>;
}

#[async_trait]
impl<T: EmbeddingRequest> Embedder for T {
    fn space(&self) -> &str {
        self.model().space()
    }

    fn dimension(&self) -> usize {
        self.model().dimension()
    }

    async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        checked(self, EmbedKind::Document, texts).await
    }

    async fn embed_query(&self, text: &str) -> Result<(Vec<f32>, Usage), ModelError> {
        let (mut vectors, usage) = checked(self, EmbedKind::Query, &[text.to_string()]).await?;
        Ok((vectors.pop().unwrap_or_default(), usage))
    }
}

/// The provider's vectors, one per text and each of the model's dimension, or an error: a
/// reply short of a vector would shift every chunk after it onto the wrong text.
async fn checked<T: EmbeddingRequest + ?Sized>(
    embedder: &T,
    kind: EmbedKind,
    texts: &[String],
) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
    if texts.is_empty() {
        return Ok((Vec::new(), Usage::default()));
    }
    let (vectors, usage) = embedder.embed_as(kind, texts).await?;
    if vectors.len() != texts.len() {
        return Err(ModelError::InvalidReply(format!(
            "{} embeddings for {} inputs",
            vectors.len(),
            texts.len()
        )));
    }
    let dimension = embedder.model().dimension();
    if let Some(v) = vectors.iter().find(|v| v.len() != dimension) {
        return Err(ModelError::InvalidReply(format!(
            "embedding has {} dimensions, expected {dimension}",
            v.len()
        )));
    }
    Ok((vectors, usage))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Replies with `vectors` vectors of `dimension` numbers, whatever it is asked.
    struct Replying {
        model: EmbeddingModel,
        vectors: usize,
        dimension: usize,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl EmbeddingRequest for Replying {
        fn model(&self) -> &EmbeddingModel {
            &self.model
        }

        async fn embed_as(
            &self,
            _: EmbedKind,
            _: &[String],
        ) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok((
                vec![vec![0.5; self.dimension]; self.vectors],
                Usage::default(),
            ))
        }
    }

    fn replying(vectors: usize, dimension: usize) -> Replying {
        Replying {
            model: EmbeddingModel::new("test", "model".into(), 4, None),
            vectors,
            dimension,
            calls: AtomicUsize::new(0),
        }
    }

    fn texts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("text {i}")).collect()
    }

    #[tokio::test]
    async fn a_reply_short_of_a_vector_or_of_a_dimension_is_an_error() {
        let short = replying(2, 4).embed(&texts(3)).await.unwrap_err();
        assert!(
            short.to_string().contains("2 embeddings for 3 inputs"),
            "{short}"
        );
        let narrow = replying(3, 3).embed(&texts(3)).await.unwrap_err();
        assert!(
            narrow.to_string().contains("3 dimensions, expected 4"),
            "{narrow}"
        );
        let query = replying(0, 4).embed_query("q").await.unwrap_err();
        assert!(
            query.to_string().contains("0 embeddings for 1 inputs"),
            "{query}"
        );
        let (vectors, _) = replying(3, 4).embed(&texts(3)).await.unwrap();
        assert_eq!(vectors.len(), 3);
    }

    #[tokio::test]
    async fn nothing_to_embed_asks_the_model_nothing() {
        let model = replying(1, 4);
        assert!(model.embed(&[]).await.unwrap().0.is_empty());
        assert_eq!(model.calls.load(Ordering::Relaxed), 0);
    }
}
