//! The sync function: on its EventBridge schedule, queues what changed in Paperless-ngx since
//! the last run (the safety net for missed webhooks) and forgets deleted documents.

use lambda_runtime::service_fn;
use shared::lambda::wire;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let svc = shared::lambda::start(wire::SYNC).await?;
    let svc = &svc;
    lambda_runtime::run(service_fn(move |event| async move {
        shared::lambda::sync_on_schedule(svc, event).await
    }))
    .await
}
