//! Model providers behind the `ChatModel` and `Embedder` ports, chosen by configuration.

pub mod lexical;
pub mod llm;
#[cfg(feature = "clients")]
pub mod ollama;
#[cfg(feature = "clients")]
pub mod openai;
