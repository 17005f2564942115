//! The embed function: a door from its SQS queue onto `pipeline::handle`, reporting the messages
//! to retry as partial batch failures.

use lambda_runtime::{LambdaEvent, service_fn};
use shared::domain::Stage;
use shared::lambda::{Function, sqs};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let svc = shared::lambda::start(Function::Embed).await?;
    let svc = &svc;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        sqs::handle_batch(svc, Stage::Embed, event).await
    }))
    .await
}
