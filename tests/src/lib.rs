//! Test support: fakes of the systems around paperless-ai-serverless, served on loopback, for
//! the end-to-end tests and the benchmark.

pub mod fake_openai;
pub mod fake_paperless;
