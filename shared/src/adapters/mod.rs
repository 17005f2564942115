//! Adapters: one folder per family of backends behind the `ports`.

#[cfg(feature = "local")]
pub mod local;
