//! The ingest function: the HTTP API behind API Gateway (webhook, uploads, jobs, suggestions),
//! the same axum router `pai serve` runs.

use shared::lambda::wire;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let svc = shared::lambda::start(wire::INGEST).await?;
    lambda_http::run(shared::lambda::http_router(svc)).await
}
