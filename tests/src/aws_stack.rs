//! The template's resources, created on a moto server: a bucket, the state and cache tables
//! with the template's key schemas and TTL, queues with dead-letter queues, a vector bucket
//! and index, and SSM secrets. The adapters' contract tests and the Lambda handler tests build
//! on these, so both test against the shapes the SAM template deploys.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_s3vectors::types::{DataType, DistanceMetric, MetadataConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;

use crate::moto::{MotoServer, unique};

/// A new bucket's name.
pub async fn bucket(moto: &MotoServer) -> String {
    let name = unique("blobs");
    moto.s3()
        .await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    name
}

/// A new table with the given string key attributes (hash first) and TTL on `expires_at`:
/// `["pk", "sk"]` is the state table, `["pk"]` the cache table.
pub async fn table(moto: &MotoServer, keys: &[&str]) -> String {
    let db = moto.dynamodb().await;
    let name = unique("table");
    let mut create = db
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest);
    for (i, k) in keys.iter().enumerate() {
        create = create
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*k)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*k)
                    .key_type(if i == 0 {
                        KeyType::Hash
                    } else {
                        KeyType::Range
                    })
                    .build()
                    .expect("key"),
            );
    }
    create.send().await.expect("create table");
    db.update_time_to_live()
        .table_name(&name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .expect("ttl"),
        )
        .send()
        .await
        .expect("enable ttl");
    name
}

/// A new queue that dead-letters after `max_receives`: its URL and its DLQ's URL.
pub async fn queue_pair(moto: &MotoServer, max_receives: u32) -> (String, String) {
    let sqs = moto.sqs().await;
    let name = unique("work");
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create dlq")
        .queue_url
        .expect("dlq url");
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dlq arn")
        .attributes
        .unwrap_or_default();
    let redrive = json!({
        "deadLetterTargetArn": attributes[&QueueAttributeName::QueueArn],
        "maxReceiveCount": max_receives.to_string(),
    });
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");
    (url, dlq_url)
}

/// A new vector bucket with an index `chunks-v1` as the template creates it: its bucket name.
pub async fn vector_index(moto: &MotoServer, dimension: i32) -> String {
    let client = moto.s3vectors().await;
    let bucket = unique("vectors");
    client
        .create_vector_bucket()
        .vector_bucket_name(&bucket)
        .send()
        .await
        .expect("create vector bucket");
    client
        .create_index()
        .vector_bucket_name(&bucket)
        .index_name("chunks-v1")
        .data_type(DataType::Float32)
        .dimension(dimension)
        .distance_metric(DistanceMetric::Cosine)
        .metadata_configuration(
            MetadataConfiguration::builder()
                .non_filterable_metadata_keys("text")
                .non_filterable_metadata_keys("title")
                .build()
                .expect("metadata configuration"),
        )
        .send()
        .await
        .expect("create index");
    bucket
}

/// Every resource of the template, and the environment its functions get (resource names
/// only; settings and secrets are the caller's).
pub struct Stack {
    pub env: HashMap<String, String>,
}

impl Stack {
    pub async fn create(moto: &MotoServer, max_receives: u32, dimension: i32) -> Stack {
        let (chunk, chunk_dlq) = queue_pair(moto, max_receives).await;
        let (embed, embed_dlq) = queue_pair(moto, max_receives).await;
        let (tag, tag_dlq) = queue_pair(moto, max_receives).await;
        let env = [
            ("STATE_TABLE", table(moto, &["pk", "sk"]).await),
            ("CACHE_TABLE", table(moto, &["pk"]).await),
            ("DOCUMENT_BUCKET", bucket(moto).await),
            ("VECTOR_BUCKET", vector_index(moto, dimension).await),
            ("VECTOR_INDEX", "chunks-v1".to_string()),
            ("CHUNK_QUEUE_URL", chunk),
            ("EMBED_QUEUE_URL", embed),
            ("TAG_QUEUE_URL", tag),
            ("CHUNK_DLQ_URL", chunk_dlq),
            ("EMBED_DLQ_URL", embed_dlq),
            ("TAG_DLQ_URL", tag_dlq),
            ("MAX_RECEIVES", max_receives.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Stack { env }
    }

    /// Stores secrets as SecureString parameters under `prefix`, as infra/put-secrets.sh does.
    pub async fn put_secrets(moto: &MotoServer, prefix: &str, secrets: &[(&str, &str)]) {
        let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
        for (name, value) in secrets {
            ssm.put_parameter()
                .name(format!("{prefix}{name}"))
                .value(*value)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .overwrite(true)
                .send()
                .await
                .expect("put parameter");
        }
    }
}
