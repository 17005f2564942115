//! The AWS adapters behind the storage ports: S3 (blobs), DynamoDB (state and cache), SQS (work
//! queues) and S3 Vectors (vector index). The Lambdas build one SDK client per service per cold
//! start and hand it to these constructors; nothing outside this folder names an SDK type, and
//! every SDK failure leaves here as a `StoreError` (see `store_error`). Each adapter is behind
//! its backend's feature (`aws-s3`, `aws-dynamodb`, `aws-sqs`, `aws-s3vectors`), so a function
//! that does not bind a resource cannot name its adapter.

#[cfg(feature = "aws-s3")]
mod blob;
#[cfg(feature = "aws-dynamodb")]
mod cache;
#[cfg(feature = "aws-sqs")]
mod queue;
#[cfg(feature = "aws-dynamodb")]
mod state;
#[cfg(feature = "aws-s3vectors")]
mod vectors;

#[cfg(feature = "aws-s3")]
pub use blob::S3Blobs;
#[cfg(feature = "aws-dynamodb")]
pub use cache::DynamoCache;
#[cfg(feature = "aws-sqs")]
pub use queue::SqsQueue;
#[cfg(feature = "aws-dynamodb")]
pub use state::DynamoState;
#[cfg(feature = "aws-s3vectors")]
pub use vectors::S3VectorIndex;

// Every SDK crate re-exports this one smithy `SdkError` (with the same HTTP response type), so
// one helper serves all of them, whichever SDK crates a build links.
type SdkError<E> = aws_smithy_runtime_api::client::result::SdkError<
    E,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ports::StoreError;

/// Service error codes that mean "try again later" whatever their HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalError",
    "InternalServerError",
    "InternalFailure",
    "KMSThrottlingException",
];

/// Maps an SDK failure to the port's error: a failed condition is a `Conflict`; throttling,
/// 5xx, timeouts and transport failures are `Unavailable` (a retry may help); anything else the
/// service refused (validation, missing bucket/table/index/queue, access) is `Invalid`.
pub(crate) fn store_error<E>(context: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // The full chain (with the raw response) goes to the log; callers get a short line that
    // is safe to show: the call, and the service's code and message or the HTTP status.
    tracing::debug!(error = %DisplayErrorContext(&err), "{context} failed");
    let detail = match (&err, err.code(), err.message()) {
        (_, Some(code), Some(message)) => format!("{context}: {code}: {message}"),
        (_, Some(code), None) => format!("{context}: {code}"),
        (SdkError::ServiceError(service), None, _) => {
            format!("{context}: HTTP {}", service.raw().status().as_u16())
        }
        (SdkError::TimeoutError(_), ..) => format!("{context}: timed out"),
        (SdkError::DispatchFailure(_), ..) => format!("{context}: could not connect"),
        (SdkError::ResponseError(_), ..) => format!("{context}: unreadable response"),
        _ => format!("{context}: request could not be built"),
    };
    match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or_default();
            let status = err.raw_response().map(|r| r.status().as_u16());
            if code == "ConditionalCheckFailedException" {
                StoreError::Conflict(detail)
            } else if TRANSIENT_CODES.contains(&code)
                || status.is_some_and(|s| s == 429 || s >= 500)
            {
                StoreError::Unavailable(detail)
            } else {
                StoreError::Invalid(detail)
            }
        }
        // The request could not even be built: a bad argument, not a flaky service.
        SdkError::ConstructionFailure(_) => StoreError::Invalid(detail),
        // Timeouts, connection failures, unreadable replies.
        _ => StoreError::Unavailable(detail),
    }
}

/// Now, in Unix seconds: what expiry attributes are compared with.
#[cfg(feature = "aws-dynamodb")]
pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(all(test, feature = "aws-s3"))]
mod tests {
    use super::*;
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn service_error(code: &str, status: u16) -> SdkError<GetObjectError> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        let raw = HttpResponse::new(status.try_into().expect("a valid status"), SdkBody::empty());
        SdkError::service_error(GetObjectError::generic(meta), raw)
    }

    #[test]
    fn service_errors_map_to_the_ports_kinds() {
        let kind = |code, status| match store_error("op", service_error(code, status)) {
            StoreError::Conflict(_) => "conflict",
            StoreError::Invalid(_) => "invalid",
            StoreError::Unavailable(_) => "unavailable",
        };
        assert_eq!(kind("ConditionalCheckFailedException", 400), "conflict");
        assert_eq!(kind("ThrottlingException", 400), "unavailable");
        assert_eq!(
            kind("ProvisionedThroughputExceededException", 400),
            "unavailable"
        );
        assert_eq!(kind("Whatever", 503), "unavailable");
        assert_eq!(kind("Whatever", 429), "unavailable");
        assert_eq!(kind("ValidationException", 400), "invalid");
        assert_eq!(kind("NotFoundException", 404), "invalid");
    }

    #[test]
    fn the_message_names_the_operation_and_the_code() {
        let e = store_error("PutItem jobs", service_error("ValidationException", 400));
        let text = e.to_string();
        assert!(
            text.contains("PutItem jobs") && text.contains("ValidationException"),
            "{text}"
        );
    }
}
