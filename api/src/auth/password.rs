//! The password policy and argon2id hashing.
//!
//! The policy runs before any hashing (a 10 MB "password" never reaches argon2). Hashing
//! and verifying run on the blocking pool behind a semaphore sized to the cores, so a burst
//! of logins queues for CPU instead of stalling the async workers that serve every other
//! request. An unknown email is verified against a dummy hash, so it takes as long as a
//! wrong password.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tasklane_shared::config::AuthSettings;
use tokio::sync::Semaphore;
use zxcvbn::Score;

use crate::problem::FieldError;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 128;

/// Checks a new password; the error names the field it was given as.
pub fn check_policy(field: &str, password: &str, email: &str, display_name: Option<&str>) -> Result<(), FieldError> {
    let error = |code: &str, message: String| FieldError { field: field.to_owned(), code: code.to_owned(), message };
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Err(error("too_short", format!("must be at least {MIN_CHARS} characters")));
    }
    if chars > MAX_CHARS {
        return Err(error("too_long", format!("must be at most {MAX_CHARS} characters")));
    }
    if password.trim().eq_ignore_ascii_case(email.trim()) {
        return Err(error("same_as_email", "must not be your email address".into()));
    }
    let local = email.split('@').next().unwrap_or_default();
    let mut inputs = vec![email, local];
    inputs.extend(display_name);
    let estimate = zxcvbn::zxcvbn(password, &inputs);
    if estimate.score() < Score::Three {
        let hint = estimate
            .feedback()
            .and_then(|feedback| feedback.warning().map(|w| w.to_string()))
            .unwrap_or_else(|| "it is too easy to guess".into());
        return Err(error("too_weak", format!("is too easy to guess ({hint}); use a longer passphrase or add unrelated words")));
    }
    Ok(())
}

/// argon2id with the configured cost, off the async runtime.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let params = Params::new(settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism, None)
            .map_err(|err| anyhow::anyhow!("invalid TASKLANE_ARGON2_* settings: {err}"))?;
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = argon2
            .hash_password(uuid::Uuid::now_v7().as_bytes())
            .map_err(|err| anyhow::anyhow!("cannot hash: {err}"))?
            .to_string();
        Ok(Self { params, permits: Arc::new(Semaphore::new(cores)), dummy_hash: dummy.into() })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a random salt.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
            argon2.hash_password(password.as_bytes()).map(|hash| hash.to_string()).map_err(|err| anyhow::anyhow!("cannot hash: {err}"))
        })
        .await?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account) it verifies against
    /// the dummy hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let argon2 = self.argon2();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = tokio::task::spawn_blocking(move || argon2.verify_password(password.as_bytes(), hash.as_str()).is_ok()).await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked_in_characters() {
        assert_eq!(check_policy("password", "short", "a@b.co", None).unwrap_err().code, "too_short");
        let long = "é".repeat(MAX_CHARS + 1);
        assert_eq!(check_policy("password", &long, "a@b.co", None).unwrap_err().code, "too_long");
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        assert_eq!(check_policy("password", "password1234", "a@b.co", None).unwrap_err().code, "too_weak");
        assert_eq!(check_policy("password", "ada.lovelace@example.com", "ada.lovelace@example.com", None).unwrap_err().code, "same_as_email");
        assert_eq!(check_policy("password", "adalovelace1815", "adalovelace1815@example.com", None).unwrap_err().code, "too_weak");
    }

    #[test]
    fn a_passphrase_is_accepted() {
        assert!(check_policy("password", "correct horse battery staple", "a@b.co", None).is_ok());
    }
}
