//! The stand-in for a port a function does not bind (chat has no queues, sync no bucket…):
//! using it is a bug in the wiring, so it fails loudly naming the missing variable instead of
//! each function inventing resources it has no permission to touch.

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::{
    BlobStore, Cache, DeadLetters, Delivery, QueueConsumer, QueueSender, StoreError,
};

pub struct Unconfigured {
    variable: &'static str,
}

impl Unconfigured {
    pub fn new(variable: &'static str) -> Unconfigured {
        Unconfigured { variable }
    }

    fn fail<T>(&self) -> Result<T, StoreError> {
        Err(StoreError::Invalid(format!(
            "this function has no {} (it is not bound to that resource)",
            self.variable
        )))
    }
}

#[async_trait]
impl BlobStore for Unconfigured {
    async fn put(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        self.fail()
    }
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.fail()
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        self.fail()
    }
}

#[async_trait]
impl Cache for Unconfigured {
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.fail()
    }
    async fn put(&self, _: &str, _: &[u8], _: Option<i64>) -> Result<(), StoreError> {
        self.fail()
    }
}

#[async_trait]
impl QueueSender for Unconfigured {
    async fn send(&self, _: &[String]) -> Result<(), StoreError> {
        self.fail()
    }
}

#[async_trait]
impl QueueConsumer for Unconfigured {
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, StoreError> {
        self.fail()
    }

    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        self.fail()
    }

    async fn release(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        self.fail()
    }
}

#[async_trait]
impl DeadLetters for Unconfigured {
    async fn dead_letters(&self, _: usize) -> Result<Vec<Delivery>, StoreError> {
        self.fail()
    }

    async fn delete_dead_letter(&self, _: &str) -> Result<(), StoreError> {
        self.fail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_use_names_the_missing_variable() {
        let u = Unconfigured::new("TAG_QUEUE_URL");
        let e = QueueSender::send(&u, &["x".into()]).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("TAG_QUEUE_URL")),
            "{e}"
        );
        assert!(BlobStore::get(&u, "k").await.is_err());
        assert!(Cache::get(&u, "k").await.is_err());
    }
}
