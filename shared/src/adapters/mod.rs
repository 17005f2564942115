//! Adapters: one folder per family of backends behind the `ports`.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "local")]
pub mod local;
#[cfg(any(feature = "aws", feature = "local"))]
mod vector_checks;
