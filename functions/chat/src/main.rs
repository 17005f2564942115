//! The chat function: questions over the archive behind a Function URL in RESPONSE_STREAM mode,
//! so answers stream token by token (an HTTP API buffers whole responses).

use shared::lambda::wire;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let svc = shared::lambda::start(wire::CHAT).await?;
    lambda_http::run_with_streaming_response(shared::lambda::chat_router(svc)).await
}
