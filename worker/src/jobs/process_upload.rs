//! `process_upload`: verifies an uploaded attachment and makes it `ready`, or `rejected`
//! with a reason (SPEC section 6).
//!
//! 1. HEAD the upload: missing is `not_uploaded`; over the limit `too_large`; another size
//!    than declared `size_mismatch`.
//! 2. GET exactly the version HEAD saw (`If-Match` its ETag) and stream it: SHA-256 over
//!    every chunk, the first bytes sniffed for magic numbers (`infer`) against the declared
//!    type (`type_mismatch`), and for images a spill to a temporary file. The content is
//!    never held in memory whole.
//! 3. Images get a PNG thumbnail (longest side 256 px) beside the object; one that does not
//!    decode is `invalid_image`.
//! 4. The verified version is copied, on condition that its ETag is still the one hashed, to
//!    the attachment's own key (clients cannot write there), the upload is deleted, and the
//!    row becomes `ready`, in that order: an attachment is never ready without its object.
//!
//! A rejection deletes what was uploaded. A store or database that cannot be reached holds
//! the kind without using attempts (`DependencyDown`, recognised from the S3 connector or
//! `sqlx` error); other failures are retried with backoff; after the last attempt the attachment is `rejected: processing_failed` (and the
//! `expire_uploads` sweep catches an attempt that died with its worker).

use std::io::Cursor;

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tasklane_shared::config::AttachmentSettings;
use tasklane_shared::domain::attachments::{self, RejectReason, Verified};
use tasklane_shared::jobs::{DependencyDown, ProcessUpload};
use tasklane_shared::queue::Claim;
use tasklane_shared::storage::{self, Bucket};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;
use uuid::Uuid;

/// Bytes enough for every signature `infer` knows, and for a UTF-8 check of text.
const SNIFF_BYTES: usize = 8 * 1024;
/// The longest side of a thumbnail.
const THUMBNAIL_SIDE: u32 = 256;
/// Images larger than this in either dimension are refused before decoding.
const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory one image decode may allocate.
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// The attachment being verified.
#[derive(Debug)]
struct Pending {
    id: Uuid,
    content_type: String,
    declared_size: i64,
    upload_key: String,
    object_key: String,
}

pub async fn process_upload(
    job: ProcessUpload,
    claim: Data<Claim>,
    db: Data<PgPool>,
    bucket: Data<Bucket>,
    limits: Data<AttachmentSettings>,
) -> Result<(), BoxDynError> {
    let attachment = sqlx::query_as!(
        Pending,
        "select id, content_type, declared_size, upload_key, object_key from attachments
         where id = $1 and status = 'processing'",
        job.attachment_id,
    )
    .fetch_optional(&*db)
    .await?;
    // Deleted meanwhile, or finished by an earlier delivery of this job.
    let Some(attachment) = attachment else {
        return Ok(());
    };
    match verify(&attachment, &bucket, &limits).await {
        Ok(Ok(verified)) => publish(&db, &bucket, &attachment, verified).await,
        Ok(Err(rejection)) => reject(&db, &bucket, &attachment, rejection).await,
        // An outage is not an attempt (the kind is held, the job handed back): only a
        // failure of the job itself on its last attempt rejects the upload.
        Err(err) if claim.attempt >= claim.max_attempts && DependencyDown::of(&*err).is_none() => {
            tracing::warn!(id = %attachment.id, error = %err, "upload processing failed for the last time");
            reject(&db, &bucket, &attachment, RejectReason::ProcessingFailed).await?;
            Err(err)
        }
        Err(err) => Err(err),
    }
}

/// Checks the upload; `Ok(Err(_))` is a verdict against the file, `Err(_)` a failure to
/// retry.
async fn verify(
    attachment: &Pending,
    bucket: &Bucket,
    limits: &AttachmentSettings,
) -> Result<Result<Verified, RejectReason>, BoxDynError> {
    let head = match bucket
        .client
        .head_object()
        .bucket(&bucket.name)
        .key(&attachment.upload_key)
        .send()
        .instrument(storage::s3_span("HeadObject", &attachment.upload_key))
        .await
    {
        Ok(head) => head,
        Err(err) if matches!(err.as_service_error(), Some(HeadObjectError::NotFound(_))) => {
            return Ok(Err(RejectReason::NotUploaded));
        }
        Err(err) => return Err(Box::new(err)),
    };
    let size = head.content_length().unwrap_or(0);
    if u64::try_from(size).unwrap_or(u64::MAX) > limits.max_bytes {
        return Ok(Err(RejectReason::TooLarge));
    }
    if size != attachment.declared_size {
        return Ok(Err(RejectReason::SizeMismatch));
    }
    let etag = head.e_tag().ok_or("the store returned no ETag")?.to_owned();

    let declared = storage::normalize_media_type(&attachment.content_type);
    let image = image_format(&declared);
    let mut spill = match image {
        Some(_) => {
            let file = tempfile::NamedTempFile::new()?;
            let writer = tokio::fs::File::from_std(file.reopen()?);
            Some((file, writer))
        }
        None => None,
    };
    let mut object = bucket
        .client
        .get_object()
        .bucket(&bucket.name)
        .key(&attachment.upload_key)
        .if_match(&etag)
        .send()
        .instrument(storage::s3_span("GetObject", &attachment.upload_key))
        .await?;
    let mut hasher = Sha256::new();
    let mut sniffed = Vec::with_capacity(SNIFF_BYTES);
    let mut detected = None;
    let mut read: i64 = 0;
    while let Some(chunk) = object.body.try_next().await? {
        read += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        hasher.update(&chunk);
        if detected.is_none() {
            let take = (SNIFF_BYTES - sniffed.len()).min(chunk.len());
            sniffed.extend_from_slice(&chunk[..take]);
            if sniffed.len() == SNIFF_BYTES {
                match sniff(&declared, &sniffed, false) {
                    Some(found) => detected = Some(found),
                    None => return Ok(Err(RejectReason::TypeMismatch)),
                }
            }
        }
        if let Some((_, writer)) = spill.as_mut() {
            writer.write_all(&chunk).await?;
        }
    }
    if read != size {
        return Err(format!(
            "read {read} bytes of an object of {size}; it changed while being read"
        )
        .into());
    }
    let detected_type = match detected {
        Some(found) => found,
        None => match sniff(&declared, &sniffed, true) {
            Some(found) => found,
            None => return Ok(Err(RejectReason::TypeMismatch)),
        },
    };
    let sha256 = format!("{:x}", hasher.finalize());

    let mut thumbnail_key = None;
    if let (Some(format), Some((file, mut writer))) = (image, spill) {
        writer.flush().await?;
        drop(writer);
        let made = tokio::task::spawn_blocking(move || thumbnail(file.path(), format)).await?;
        let Ok(png) = made else {
            return Ok(Err(RejectReason::InvalidImage));
        };
        let key = storage::thumbnail_key(&attachment.object_key);
        bucket
            .client
            .put_object()
            .bucket(&bucket.name)
            .key(&key)
            .content_type("image/png")
            .body(png.into())
            .send()
            .instrument(storage::s3_span("PutObject", &key))
            .await?;
        thumbnail_key = Some(key);
    }

    // Copies the bytes just verified, and only them: if the upload was replaced meanwhile
    // the condition fails and the next attempt verifies the new version.
    bucket
        .client
        .copy_object()
        .bucket(&bucket.name)
        .copy_source(format!("{}/{}", bucket.name, attachment.upload_key))
        .copy_source_if_match(&etag)
        .key(&attachment.object_key)
        .send()
        .instrument(storage::s3_span("CopyObject", &attachment.object_key))
        .await?;
    Ok(Ok(Verified { size, sha256, detected_type, thumbnail_key }))
}

/// The object is in place: the row becomes `ready`, then the upload goes.
async fn publish(
    db: &PgPool,
    bucket: &Bucket,
    attachment: &Pending,
    verified: Verified,
) -> Result<(), BoxDynError> {
    let mut tx = db.begin().await?;
    let ready = attachments::mark_ready(&mut tx, attachment.id, &verified).await?;
    tx.commit().await?;
    if ready.is_none() {
        // Deleted while processing: its delete_objects job may have run before the copy and
        // the thumbnail were written, so remove them here too.
        delete_all(bucket, attachment).await;
        return Ok(());
    }
    bucket.delete_quietly(&attachment.upload_key).await;
    tracing::info!(id = %attachment.id, size = verified.size, detected_type = %verified.detected_type, "attachment ready");
    Ok(())
}

/// The row becomes `rejected` with its reason (its owner hears of it), and every object it
/// may have is deleted.
async fn reject(
    db: &PgPool,
    bucket: &Bucket,
    attachment: &Pending,
    reason: RejectReason,
) -> Result<(), BoxDynError> {
    let mut tx = db.begin().await?;
    attachments::reject(&mut tx, &[attachment.id], reason).await?;
    tx.commit().await?;
    delete_all(bucket, attachment).await;
    tracing::info!(id = %attachment.id, reason = reason.as_str(), "attachment rejected");
    Ok(())
}

async fn delete_all(bucket: &Bucket, attachment: &Pending) {
    for key in storage::attachment_objects(&attachment.upload_key, &attachment.object_key) {
        bucket.delete_quietly(&key).await;
    }
}

/// The image format of a declared type we thumbnail.
fn image_format(media_type: &str) -> Option<image::ImageFormat> {
    match media_type {
        "image/png" => Some(image::ImageFormat::Png),
        "image/jpeg" => Some(image::ImageFormat::Jpeg),
        "image/gif" => Some(image::ImageFormat::Gif),
        "image/webp" => Some(image::ImageFormat::WebP),
        _ => None,
    }
}

/// The detected type when the first bytes fit the declared type, else `None`.
///
/// A type with a known signature must show it. A type without one (text) must show no
/// signature at all, and text must be UTF-8 without NUL bytes; `complete` says whether
/// `head` is the whole file (else its last character may be cut).
pub fn sniff(declared: &str, head: &[u8], complete: bool) -> Option<String> {
    if let Some(kind) = infer::get(head) {
        let detected = storage::normalize_media_type(kind.mime_type());
        return (detected == declared).then_some(detected);
    }
    if infer::is_mime_supported(declared) {
        return None;
    }
    if declared.starts_with("text/") {
        let utf8 = match std::str::from_utf8(head) {
            Ok(_) => true,
            Err(err) => !complete && err.error_len().is_none(),
        };
        return (utf8 && !head.contains(&0)).then(|| declared.to_owned());
    }
    Some(declared.to_owned())
}

/// A PNG of the image scaled to fit 256×256 (never enlarged), decoded within limits so a
/// decompression bomb fails instead of exhausting memory.
fn thumbnail(
    path: &std::path::Path,
    format: image::ImageFormat,
) -> Result<Vec<u8>, image::ImageError> {
    let mut reader = image::ImageReader::open(path)?;
    reader.set_format(format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode()?;
    let small = if decoded.width().max(decoded.height()) > THUMBNAIL_SIDE {
        decoded.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    } else {
        decoded
    };
    let mut png = Cursor::new(Vec::new());
    small.to_rgba8().write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const ELF_MAGIC: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0";

    #[test]
    fn a_signature_must_match_the_declared_type() {
        assert_eq!(sniff("image/png", PNG_MAGIC, false).as_deref(), Some("image/png"));
        assert_eq!(sniff("image/png", ELF_MAGIC, false), None);
        assert_eq!(sniff("image/jpeg", PNG_MAGIC, false), None);
        assert_eq!(sniff("image/png", b"hello", true), None);
    }

    #[test]
    fn text_has_no_signature_no_nul_and_is_utf8() {
        assert_eq!(sniff("text/plain", "été\n".as_bytes(), true).as_deref(), Some("text/plain"));
        assert_eq!(sniff("text/plain", ELF_MAGIC, false), None);
        assert_eq!(sniff("text/csv", b"a,b\0", true), None);
        // A character cut at the end of the sniffed bytes is fine, unless the file ends there.
        assert!(sniff("text/plain", &"é".as_bytes()[..1], false).is_some());
        assert!(sniff("text/plain", &"é".as_bytes()[..1], true).is_none());
    }

    #[test]
    fn thumbnails_fit_256_and_small_images_keep_their_size() {
        let dir = tempfile::tempdir().unwrap();
        for (w, h, expect) in [(1000, 500, (256, 128)), (100, 40, (100, 40))] {
            let path = dir.path().join(format!("{w}x{h}.png"));
            image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10])).save(&path).unwrap();
            let png = thumbnail(&path, image::ImageFormat::Png).unwrap();
            let thumb = image::load_from_memory(&png).unwrap();
            assert_eq!((thumb.width(), thumb.height()), expect);
        }
    }
}
