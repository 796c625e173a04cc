//! `delete_objects`: removes objects from the bucket (a deleted attachment, a purged task's
//! files). Deleting a missing object succeeds, so redelivery is harmless; a store that cannot
//! be reached holds the kind (the S3 connector error is a `DependencyDown`), other failures
//! are retried with backoff.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use tasklane_shared::jobs::DeleteObjects;
use tasklane_shared::storage::Bucket;
use tracing::Instrument;

pub async fn delete_objects(job: DeleteObjects, bucket: Data<Bucket>) -> Result<(), BoxDynError> {
    for key in &job.keys {
        let span = tasklane_shared::storage::s3_span("DeleteObject", key);
        bucket.client.delete_object().bucket(&bucket.name).key(key).send().instrument(span).await?;
    }
    tracing::info!(objects = job.keys.len(), "objects deleted");
    Ok(())
}
