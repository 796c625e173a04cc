//! Opaque tokens: refresh tokens, event-stream tickets, and the single-use links of
//! verification and reset emails.
//!
//! Each is 256 random bits, base64url, handed out once and stored only as its SHA-256: the
//! token is random, so a fast hash is enough (no guessing to slow down), and a leaked table
//! holds nothing that works. They are not JWTs, so one can never pass as a bearer token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

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

    #[test]
    fn opaque_tokens_are_256_bits_and_hash_stably() {
        let token = new_opaque_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_ne!(token, new_opaque_token());
        assert_eq!(hash_token(&token), hash_token(&token));
        assert_eq!(hash_token(&token).len(), 32);
    }
}
