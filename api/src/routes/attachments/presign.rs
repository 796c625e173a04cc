//! The presigned object-store request a client uploads with, and the `Content-Disposition`
//! that names the file (signed into the upload, sent again by every download). Signing
//! needs no network: the client for `S3_PUBLIC_ENDPOINT` signs locally. Downloads are not
//! presigned: they go through the API ([`super::download`]).

use aws_sdk_s3::presigning::PresigningConfig;
use chrono::Utc;

use super::types::UploadInstructions;
use crate::problem::ServerError;
use crate::state::AppState;

/// What the presigned PUT signs: the store refuses any other type, length or disposition.
pub struct Upload<'a> {
    pub key: &'a str,
    pub content_type: &'a str,
    pub size: i64,
    pub disposition: &'a str,
}

/// `Content-Disposition: attachment` naming the file (RFC 6266): an ASCII fallback and the
/// exact name percent-encoded as UTF-8.
pub fn content_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

fn presigning(ttl: std::time::Duration) -> Result<PresigningConfig, ServerError> {
    PresigningConfig::expires_in(ttl).map_err(ServerError::internal)
}

/// The one request that uploads the file, valid for the configured upload TTL.
pub async fn upload(
    state: &AppState,
    upload: Upload<'_>,
) -> Result<UploadInstructions, ServerError> {
    let ttl = state.settings.attachments.upload_url_ttl;
    let expires_at = Utc::now() + ttl;
    let presigned = state
        .s3
        .put_object()
        .bucket(&state.settings.s3.bucket)
        .key(upload.key)
        .content_type(upload.content_type)
        .content_length(upload.size)
        .content_disposition(upload.disposition)
        .presigned(presigning(ttl)?)
        .await
        .map_err(ServerError::internal)?;
    let headers =
        presigned.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
    Ok(UploadInstructions {
        method: presigned.method().to_owned(),
        url: presigned.uri().to_owned(),
        headers,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_has_an_ascii_fallback_and_the_exact_name() {
        assert_eq!(
            content_disposition("plan \"v2\".png"),
            "attachment; filename=\"plan _v2_.png\"; filename*=UTF-8''plan%20%22v2%22.png"
        );
        assert_eq!(
            content_disposition("été.txt"),
            "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
        );
    }
}
