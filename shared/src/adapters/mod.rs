//! Adapters: one folder per family of backends behind the `ports`.

#[cfg(any(
    feature = "aws-dynamodb",
    feature = "aws-s3",
    feature = "aws-sqs",
    feature = "aws-s3vectors"
))]
pub mod aws;
#[cfg(feature = "local")]
pub mod local;
#[cfg(any(feature = "aws-s3vectors", feature = "local"))]
mod vector_checks;
