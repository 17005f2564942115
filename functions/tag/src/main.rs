//! The tag function: a door from its SQS queue onto the tag stage, reporting the messages to
//! retry as partial batch failures. Its wiring (`lambda::wire::TAG`) and the stage are chosen
//! at compile time: this binary links no other stage and no adapter it does not bind.

use lambda_runtime::{LambdaEvent, service_fn};
use shared::lambda::{sqs, wire};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let svc = shared::lambda::start(wire::TAG).await?;
    let svc = &svc;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        sqs::tag_batch(svc, event).await
    }))
    .await
}
