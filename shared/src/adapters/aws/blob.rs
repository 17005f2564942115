//! Blob store on S3: documents' text snapshots, manifests and uploads, one object per key.
//! Large objects go up as a multipart upload (aborted on failure, so no parts linger and bill),
//! and clients upload their files straight to S3 through a presigned PUT.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::store_error;
use crate::ports::{BlobStore, StoreError, UploadTarget};

/// Objects above this size are uploaded in parts of this size (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;

pub struct S3Blobs {
    client: Client,
    bucket: String,
}

impl S3Blobs {
    pub fn new(client: Client, bucket: impl Into<String>) -> S3Blobs {
        S3Blobs {
            client,
            bucket: bucket.into(),
        }
    }

    async fn put_multipart(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| store_error("S3 CreateMultipartUpload", e))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            StoreError::Unavailable("S3 CreateMultipartUpload returned no upload id".into())
        })?;
        let uploaded = self.upload_parts(key, upload_id, bytes).await;
        if let Err(e) = uploaded {
            // Until aborted, the parts stay (and are billed) though no object ever appears.
            if let Err(abort) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
            {
                tracing::warn!(key, error = %store_error("S3 AbortMultipartUpload", abort), "multipart upload left behind");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        for (i, chunk) in bytes.chunks(PART_SIZE).enumerate() {
            let number = i as i32 + 1;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| store_error("S3 UploadPart", e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| store_error("S3 CompleteMultipartUpload", e))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > PART_SIZE {
            return self.put_multipart(key, bytes).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| store_error("S3 PutObject", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(store_error("S3 GetObject", e)),
        };
        let body = object.body.collect().await.map_err(|e| {
            StoreError::Unavailable(format!("S3 GetObject {key}: reading the body: {e}"))
        })?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        // S3 answers 204 for a key that is not there: deleting is idempotent as it stands.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| store_error("S3 DeleteObject", e))?;
        Ok(())
    }

    fn direct_uploads(&self) -> bool {
        true
    }

    async fn upload_url(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        expires: Duration,
    ) -> Result<Option<UploadTarget>, StoreError> {
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| StoreError::Invalid(format!("upload URL lifetime {expires:?}: {e}")))?;
        let length = i64::try_from(size)
            .map_err(|_| StoreError::Invalid(format!("upload size {size} is out of range")))?;
        // Type, length and `If-None-Match: *` are signed: S3 refuses another type, another
        // length (no 5 GB object behind a 1 KB promise), and a second PUT to the key (the URL
        // cannot be reused to slip another document under the same job).
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length)
            .if_none_match("*")
            .presigned(config)
            .await
            .map_err(|e| store_error("S3 presigned PutObject", e))?;
        let headers = request
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        Ok(Some(UploadTarget {
            url: request.uri().to_string(),
            headers,
        }))
    }
}
