//! Access tokens (JWT, HS256 only) and opaque refresh and email tokens.
//!
//! An access token carries `sub iat exp iss aud jti role sid` (`sid`: the login's refresh
//! family, so "sign out other sessions" knows which one is current) and every claim is
//! checked. The algorithm is pinned: a token signed otherwise, or `alg: none`, is refused.
//! The header is typed explicitly (RFC 8725, 3.11): it must be exactly `{"alg": "HS256",
//! "typ": "JWT"}`, as issued. Key hints the server never uses (`kid`, `jku`, `jwk`, `x5u`,
//! `x5c`, ...), `crit` or any other member make a token invalid, even when its signature is
//! right: nothing a client writes in a header can steer how it is checked.
//!
//! A client sends the same access token with every request for its 15 minutes, and
//! checking it (two base64 decodes, the header parsed twice, the claims twice, an HMAC key
//! set up and run) was a large part of a cached read's cost. So a token that verified is
//! remembered by its exact text: the same bytes verify the same way, and only what time
//! changes (expiry) is checked again. Any other text, one byte changed, is checked in full.
//!
//! Refresh tokens, tickets and email links are opaque tokens ([`tasklane_shared::tokens`]),
//! re-exported here: 256 random bits, stored only as SHA-256 hashes, never JWTs, so one can
//! never pass as a bearer token.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use tasklane_shared::config::Settings;
pub use tasklane_shared::tokens::{hash_token, new_opaque_token};
use uuid::Uuid;

use super::Role;

/// Verified access tokens remembered, at most (a few MB).
const VERIFIED_TOKENS: usize = 20_000;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: Uuid,
    pub role: Role,
    /// The refresh-token family (login session) the token was issued for.
    pub sid: Uuid,
}

/// Issues and checks access tokens.
#[derive(Clone)]
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens that verified, by their exact text (see the module doc).
    verified: Arc<quick_cache::sync::Cache<Box<str>, Arc<AccessClaims>>>,
    issuer: String,
    audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenIssuer {
    pub fn new(settings: &Settings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let auth = &settings.auth;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&auth.jwt_issuer]);
        validation.set_audience(&[&auth.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_TOKENS)),
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
            access_ttl: auth.access_token_ttl,
            refresh_ttl: auth.refresh_token_ttl,
        }
    }

    /// A signed access token for a user and session.
    pub fn issue(&self, user: Uuid, role: Role, session: Uuid) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user,
            iat: now,
            exp: now + i64::try_from(self.access_ttl.as_secs()).unwrap_or(900),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Uuid::now_v7(),
            role,
            sid: session,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, jsonwebtoken::errors::Error> {
        if let Some(claims) = self.verified.get(token)
            && !self.expired(&claims)
        {
            return Ok(claims);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)?;
        if !is_as_issued(&data.header) {
            return Err(jsonwebtoken::errors::ErrorKind::InvalidToken.into());
        }
        let claims = Arc::new(data.claims);
        self.verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Expiry as `jsonwebtoken` judges it: `exp` in the past by more than the leeway.
    fn expired(&self, claims: &AccessClaims) -> bool {
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(0);
        claims.exp < chrono::Utc::now().timestamp() - leeway
    }
}

/// Whether a header is the one [`TokenIssuer::issue`] writes, and nothing more.
fn is_as_issued(header: &Header) -> bool {
    let Header {
        typ,
        alg,
        cty,
        jku,
        jwk,
        kid,
        x5u,
        x5c,
        x5t,
        x5t_s256,
        crit,
        enc,
        zip,
        url,
        nonce,
        extras,
    } = header;
    *alg == Algorithm::HS256
        && typ.as_deref() == Some("JWT")
        && cty.is_none()
        && jku.is_none()
        && jwk.is_none()
        && kid.is_none()
        && x5u.is_none()
        && x5c.is_none()
        && x5t.is_none()
        && x5t_s256.is_none()
        && crit.is_none()
        && enc.is_none()
        && zip.is_none()
        && url.is_none()
        && nonce.is_none()
        && extras.inner().is_empty()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(&Settings::from_vars(Default::default()).expect("dev settings"))
    }

    #[test]
    fn an_issued_token_verifies_with_all_claims() {
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let claims = issuer().verify(&issuer().issue(user, Role::Admin, session).unwrap()).unwrap();
        assert_eq!((claims.sub, claims.role, claims.sid), (user, Role::Admin, session));
        assert_eq!(claims.exp - claims.iat, 900);
    }

    /// A token over the right claims, signed with the right key, under a header of our own.
    fn signed_with_header(header: serde_json::Value) -> String {
        let issued = issuer().issue(Uuid::now_v7(), Role::User, Uuid::now_v7()).unwrap();
        let claims = issued.split('.').nth(1).unwrap();
        let head = URL_SAFE_NO_PAD.encode(header.to_string());
        let signing_input = format!("{head}.{claims}");
        let settings = Settings::from_vars(Default::default()).expect("dev settings");
        let key = EncodingKey::from_secret(settings.jwt_secret.expose_secret().as_bytes());
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{signing_input}.{signature}")
    }

    #[test]
    fn a_correctly_signed_token_with_the_issued_header_verifies() {
        let token = signed_with_header(serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        assert!(issuer().verify(&token).is_ok());
    }

    #[test]
    fn correctly_signed_tokens_with_other_headers_are_refused() {
        for header in [
            serde_json::json!({"alg": "HS256"}),
            serde_json::json!({"alg": "HS256", "typ": "at+jwt"}),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "other"}),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "jku": "https://evil.example/jwks"}),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "x5u": "https://evil.example/cert"}),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "extra": 1}),
        ] {
            assert!(issuer().verify(&signed_with_header(header.clone())).is_err(), "{header}");
        }
    }

    #[test]
    fn a_remembered_token_is_still_checked_for_expiry_and_a_changed_one_in_full() {
        let issuer = issuer();
        let token = issuer.issue(Uuid::now_v7(), Role::User, Uuid::now_v7()).unwrap();
        let claims = issuer.verify(&token).unwrap();
        assert!(issuer.verify(&token).is_ok(), "remembered");
        // One byte of the signature changed: not the remembered text, so checked and refused.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(issuer.verify(std::str::from_utf8(&tampered).unwrap()).is_err());
        // Remembered (as if it had verified a minute ago), but past its expiry and the
        // leeway: refused.
        let now = chrono::Utc::now().timestamp();
        let old = AccessClaims { iat: now - 960, exp: now - 60, ..(*claims).clone() };
        let settings = Settings::from_vars(Default::default()).expect("dev settings");
        let key = EncodingKey::from_secret(settings.jwt_secret.expose_secret().as_bytes());
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &key).unwrap();
        assert!(issuer.verify(&expired).is_err());
        issuer.verified.insert(expired.as_str().into(), Arc::new(old));
        assert!(issuer.verify(&expired).is_err(), "remembered, yet expired");
    }
}
