//! paperless-ai-serverless: AI tagging and document chat for Paperless-ngx.
//!
//! This crate holds everything the Lambda functions and the `pai` binary share: the domain
//! (`domain`), the ports (`ports`) and their adapters (`adapters`), the use cases (`pipeline`),
//! the model providers (`providers`, `models`), the Paperless-ngx client (`paperless`) and the
//! HTTP API (`http`). Doors (Lambda handlers, CLI commands) only translate to and from it.

pub mod adapters;
pub mod auth;
#[cfg(feature = "tokens")]
pub mod cl100k;
pub mod config;
pub mod cost;
pub mod domain;
#[cfg(all(feature = "local", feature = "clients"))]
pub mod embedded;
pub mod filter;
#[cfg(feature = "http")]
pub mod http;
pub mod keyword;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod metrics;
pub mod models;
#[cfg(feature = "clients")]
pub mod paperless;
pub mod pipeline;
pub mod ports;
pub mod providers;
pub mod resilience;
#[cfg(any(feature = "aws-s3vectors", feature = "bedrock"))]
pub mod smithy_json;
pub mod state_keys;
pub mod telemetry;
pub mod text;
#[cfg(feature = "local")]
pub mod worker;
