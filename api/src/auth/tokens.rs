//! Access tokens (JWT, HS256 only) and opaque refresh and email tokens.
//!
//! An access token carries `sub iat exp iss aud jti role sid` (`sid`: the login's refresh
//! family, so "sign out other sessions" knows which one is current) and every claim is
//! checked. The algorithm is pinned: a token signed otherwise, or `alg: none`, is refused.
//! The header is typed explicitly (RFC 8725, 3.11): it must be exactly `{"alg": "HS256",
//! "typ": "JWT"}`, as issued. Key hints the server never uses (`kid`, `jku`, `jwk`, `x5u`,
//! `x5c`, ...), `crit` or any other member make a token invalid, even when its signature is
//! right: nothing a client writes in a header can steer how it is checked.
//! Refresh tokens, tickets and email links are opaque tokens ([`tasklane_shared::tokens`]),
//! re-exported here: 256 random bits, stored only as SHA-256 hashes, never JWTs, so one can
//! never pass as a bearer token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use tasklane_shared::config::Settings;
pub use tasklane_shared::tokens::{hash_token, new_opaque_token};
use uuid::Uuid;

use super::Role;

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
    pub fn verify(&self, token: &str) -> Result<AccessClaims, jsonwebtoken::errors::Error> {
        // One decode gives the header with the claims: the header is parsed once per request.
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)?;
        if !is_as_issued(&data.header) {
            return Err(jsonwebtoken::errors::ErrorKind::InvalidToken.into());
        }
        Ok(data.claims)
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
}
