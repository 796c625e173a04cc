//! Access tokens (JWT, HS256 only) and opaque refresh and email tokens.
//!
//! An access token carries `sub iat exp iss aud jti role sid` (`sid`: the login's refresh
//! family, so "sign out other sessions" knows which one is current) and every claim is
//! checked. The algorithm is pinned: a token signed otherwise, or `alg: none`, is refused.
//! Refresh and email tokens are 256 random bits, base64url, stored only as SHA-256 hashes;
//! they are not JWTs, so one can never pass as a bearer token.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tasklane_shared::config::Settings;
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
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
    }
}

/// 256 random bits, base64url without padding (43 characters).
pub fn new_opaque_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of an opaque token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn opaque_tokens_are_256_bits_and_hash_stably() {
        let token = new_opaque_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_ne!(token, new_opaque_token());
        assert_eq!(hash_token(&token), hash_token(&token));
    }
}
