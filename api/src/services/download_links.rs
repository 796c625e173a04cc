//! Signed download links (SPEC sections 6 and 14).
//!
//! A ready attachment is downloaded through the API, not straight from the object store: a
//! presigned S3 GET can only override six response headers, so the store cannot send
//! `X-Content-Type-Options: nosniff` or a sandboxing `Content-Security-Policy`, and a browser
//! could render an uploaded file as a page on the store's origin. A link is the route plus
//! `expires` and `signature`: an HMAC-SHA256, under a key derived from `JWT_SECRET`, of the
//! task, the attachment, which object (the file or its thumbnail) and the expiry. Like the
//! presigned URL it replaces, it needs no bearer header (a browser can follow it), names no
//! account, and stops working after `TASKLANE_DOWNLOAD_URL_TTL_SECS`. A link cannot be
//! bent to another attachment, object or expiry without the key.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use url::Url;
use uuid::Uuid;

/// Keeps this key apart from every other use of `JWT_SECRET`: a token's signature is never a
/// valid link signature, nor the other way round.
const KEY_LABEL: &[u8] = b"tasklane download links v1";

/// Which object of an attachment a link downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadTarget {
    /// The file, under its original name.
    File,
    /// The PNG thumbnail of an image.
    Thumbnail,
}

impl DownloadTarget {
    /// The last segment of the route, and what the signature names.
    pub fn segment(self) -> &'static str {
        match self {
            Self::File => "content",
            Self::Thumbnail => "thumbnail",
        }
    }
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// Missing, malformed or not signed by us (a changed id, target or expiry included).
    Invalid,
    /// Signed by us, but its time is up.
    Expired,
}

/// What a link names; the signature covers all of it.
#[derive(Debug, Clone, Copy)]
pub struct LinkTarget {
    pub task: Uuid,
    pub attachment: Uuid,
    pub target: DownloadTarget,
}

/// A link and when it stops working.
#[derive(Debug, Clone)]
pub struct SignedLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Signs and checks download links; cheap to clone.
#[derive(Clone)]
pub struct DownloadLinks {
    key: hmac::Key,
    /// The origin clients reach the API at.
    base: Url,
    ttl: Duration,
}

impl std::fmt::Debug for DownloadLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadLinks").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl DownloadLinks {
    /// Links under `base` (the API's public origin), signed with a key derived from
    /// `secret`, working for `ttl`.
    pub fn new(secret: &SecretString, base: Url, ttl: Duration) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
        let derived = hmac::sign(&root, KEY_LABEL);
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), base, ttl }
    }

    /// A link to `what` that works for the configured time from `now`.
    pub fn link(&self, what: LinkTarget, now: DateTime<Utc>) -> SignedLink {
        let expires_at = now + self.ttl;
        SignedLink { url: self.url_until(what, expires_at), expires_at }
    }

    /// A link to `what` that works until `expires_at` (tests make expired ones with it).
    pub fn url_until(&self, what: LinkTarget, expires_at: DateTime<Utc>) -> String {
        let expires = expires_at.timestamp();
        let signature = URL_SAFE_NO_PAD.encode(self.mac(what, expires).as_ref());
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}/api/v1/tasks/{}/attachments/{}/{}",
            self.base.path().trim_end_matches('/'),
            what.task,
            what.attachment,
            what.target.segment()
        ));
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("signature", &signature);
        url.to_string()
    }

    /// Whether `expires` and `signature` (as received) make a live link to `what`. The
    /// signature is checked first and in constant time, so a forged link learns nothing,
    /// not even whether it would have expired.
    pub fn verify(
        &self,
        what: LinkTarget,
        expires: Option<&str>,
        signature: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LinkError> {
        let expires: i64 = expires.and_then(|raw| raw.parse().ok()).ok_or(LinkError::Invalid)?;
        let signature =
            signature.and_then(|raw| URL_SAFE_NO_PAD.decode(raw).ok()).ok_or(LinkError::Invalid)?;
        hmac::verify(&self.key, &message(what, expires), &signature)
            .map_err(|_| LinkError::Invalid)?;
        if expires <= now.timestamp() { Err(LinkError::Expired) } else { Ok(()) }
    }

    fn mac(&self, what: LinkTarget, expires: i64) -> hmac::Tag {
        hmac::sign(&self.key, &message(what, expires))
    }
}

/// What is signed: every part on its own line, so no two links share a message.
fn message(what: LinkTarget, expires: i64) -> Vec<u8> {
    format!("{}\n{}\n{}\n{expires}", what.task, what.attachment, what.target.segment()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> DownloadLinks {
        DownloadLinks::new(
            &SecretString::from("a-secret-of-enough-length-for-the-tests"),
            Url::parse("https://api.example/").expect("a literal URL"),
            Duration::from_secs(300),
        )
    }

    fn query(url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).ok()?;
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    fn target(target: DownloadTarget) -> LinkTarget {
        LinkTarget { task: Uuid::from_u128(1), attachment: Uuid::from_u128(2), target }
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_only_for_what_it_names() {
        let links = links();
        let now = Utc::now();
        let what = target(DownloadTarget::File);
        let link = links.link(what, now);
        assert!(link.url.starts_with(&format!(
            "https://api.example/api/v1/tasks/{}/attachments/{}/content?expires=",
            what.task, what.attachment
        )));
        let (expires, signature) = (query(&link.url, "expires"), query(&link.url, "signature"));
        let check = |what, at| links.verify(what, expires.as_deref(), signature.as_deref(), at);
        assert_eq!(check(what, now), Ok(()));
        assert_eq!(check(what, link.expires_at), Err(LinkError::Expired));
        assert_eq!(check(target(DownloadTarget::Thumbnail), now), Err(LinkError::Invalid));
        let other = LinkTarget { attachment: Uuid::from_u128(3), ..what };
        assert_eq!(check(other, now), Err(LinkError::Invalid));
        // A later expiry with the same signature is not ours.
        let later = (link.expires_at.timestamp() + 3600).to_string();
        assert_eq!(
            links.verify(what, Some(&later), signature.as_deref(), now),
            Err(LinkError::Invalid)
        );
        assert_eq!(links.verify(what, None, signature.as_deref(), now), Err(LinkError::Invalid));
        assert_eq!(
            links.verify(what, expires.as_deref(), Some("%%"), now),
            Err(LinkError::Invalid)
        );
    }

    #[test]
    fn another_secret_signs_other_links() {
        let what = target(DownloadTarget::File);
        let now = Utc::now();
        let link = links().link(what, now);
        let other = DownloadLinks::new(
            &SecretString::from("another-secret-of-enough-length-for-tests"),
            Url::parse("https://api.example/").expect("a literal URL"),
            Duration::from_secs(300),
        );
        let (expires, signature) = (query(&link.url, "expires"), query(&link.url, "signature"));
        assert_eq!(
            other.verify(what, expires.as_deref(), signature.as_deref(), now),
            Err(LinkError::Invalid)
        );
    }
}
