//! The password policy and argon2id hashing.
//!
//! The policy runs before any hashing (a 10 MB "password" never reaches argon2). Hashing
//! and verifying run on a pool of their own, one thread per core, off the async runtime, so
//! a burst of logins queues for CPU instead of stalling the async workers that serve every
//! other request. The pool's threads are scheduled `SCHED_IDLE`: they get every cycle
//! nobody else wants, and yield to request handling (and to the database on the same host)
//! at once, so `/health/live` stays fast under full login load. An unknown email is
//! verified against a dummy hash, so it takes as long as a wrong password.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tasklane_shared::config::AuthSettings;
use tokio::sync::oneshot;
use zxcvbn::Score;

use crate::problem::FieldError;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 128;

/// Refuses a password longer than any the policy accepts, before anything hashes it: sign-in
/// and the current password of a change run this instead of [`check_policy`], so a megabyte
/// of password costs a length check, not an argon2 run.
pub fn check_length(field: &str, password: &str) -> Result<(), FieldError> {
    // Bytes bound characters from above: most passwords never need the count.
    if password.len() > MAX_CHARS && password.chars().count() > MAX_CHARS {
        return Err(FieldError {
            field: field.to_owned(),
            code: "too_long".to_owned(),
            message: format!("must be at most {MAX_CHARS} characters"),
        });
    }
    Ok(())
}

/// OWASP's argon2id configurations (memory KiB, iterations), all with one lane: the cost must
/// reach at least one of them in both memory and time.
/// <https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html>
const OWASP_MINIMUMS: [(u32, u32); 5] =
    [(47_104, 1), (19_456, 2), (12_288, 3), (9_216, 4), (7_168, 5)];

/// Refuses an argon2 cost below OWASP's minimum, whatever the environment: a weak hash is
/// not recoverable later, since the passwords it protects are gone by then.
pub fn check_cost(settings: &AuthSettings) -> anyhow::Result<()> {
    let (m, t, p) =
        (settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism);
    let strong = p >= 1 && OWASP_MINIMUMS.iter().any(|&(min_m, min_t)| m >= min_m && t >= min_t);
    anyhow::ensure!(
        strong,
        "TASKLANE_ARGON2_MEMORY_KIB={m}, TASKLANE_ARGON2_ITERATIONS={t}, \
         TASKLANE_ARGON2_PARALLELISM={p} is below OWASP's minimum for argon2id (for example \
         19456 KiB with 2 iterations, or 47104 KiB with 1)"
    );
    Ok(())
}

/// Checks a new password; the error names the field it was given as.
pub fn check_policy(
    field: &str,
    password: &str,
    email: &str,
    display_name: Option<&str>,
) -> Result<(), FieldError> {
    let error = |code: &str, message: String| FieldError {
        field: field.to_owned(),
        code: code.to_owned(),
        message,
    };
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
        return Err(error(
            "too_weak",
            format!(
                "is too easy to guess ({hint}); use a longer passphrase or add unrelated words"
            ),
        ));
    }
    Ok(())
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Threads that only hash, at idle priority; the queue in front of them is the back-pressure.
struct HashPool {
    jobs: Mutex<mpsc::Sender<HashJob>>,
}

impl HashPool {
    fn new(threads: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<HashJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || {
                lower_priority();
                loop {
                    // The lock is held only to take a job, never while hashing.
                    let job =
                        queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        // The hasher is gone: so is the pool.
                        Err(_) => break,
                    }
                }
            })?;
        }
        Ok(Self { jobs: Mutex::new(jobs) })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (done, result) = oneshot::channel();
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Box::new(move || {
                // The request went away while this waited in the queue: skip the work.
                if !done.is_closed() {
                    let _ = done.send(work());
                }
            }))
            .map_err(|_| anyhow::anyhow!("the hashing pool stopped"))?;
        Ok(result.await?)
    }
}

/// `SCHED_IDLE` for the calling thread; where the platform refuses, it runs as it is.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if let Err(err) = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        ) {
            tracing::warn!(
                ?err,
                "cannot lower the priority of a hashing thread; hashing will compete with requests"
            );
        }
    }
}

/// argon2id with the configured cost, off the async runtime; cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    pool: Arc<HashPool>,
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        check_cost(settings)?;
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("invalid TASKLANE_ARGON2_* settings: {err}"))?;
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = argon2
            .hash_password(uuid::Uuid::now_v7().as_bytes())
            .map_err(|err| anyhow::anyhow!("cannot hash: {err}"))?
            .to_string();
        Ok(Self { params, pool: Arc::new(HashPool::new(cores)?), dummy_hash: dummy.into() })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a random salt.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let argon2 = self.argon2();
        self.pool
            .run(move || {
                argon2
                    .hash_password(password.as_bytes())
                    .map(|hash| hash.to_string())
                    .map_err(|err| anyhow::anyhow!("cannot hash: {err}"))
            })
            .await?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account) it verifies against
    /// the dummy hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let argon2 = self.argon2();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .pool
            .run(move || argon2.verify_password(password.as_bytes(), hash.as_str()).is_ok())
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked_in_characters() {
        assert_eq!(
            check_policy("password", "short", "a@b.co", None).unwrap_err().code,
            "too_short"
        );
        let long = "é".repeat(MAX_CHARS + 1);
        assert_eq!(check_policy("password", &long, "a@b.co", None).unwrap_err().code, "too_long");
    }

    #[test]
    fn sign_in_refuses_only_what_no_policy_accepts() {
        assert!(check_length("password", &"x".repeat(MAX_CHARS)).is_ok());
        assert!(check_length("password", &"é".repeat(MAX_CHARS)).is_ok());
        assert!(check_length("password", "short").is_ok());
        let huge = "x".repeat(1 << 20);
        assert_eq!(check_length("password", &huge).unwrap_err().code, "too_long");
    }

    fn auth(m: u32, t: u32, p: u32) -> AuthSettings {
        let mut settings =
            tasklane_shared::config::Settings::from_vars(Default::default()).expect("dev").auth;
        (settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism) =
            (m, t, p);
        settings
    }

    #[test]
    fn the_default_cost_is_owasps_and_weaker_costs_are_refused() {
        let defaults = auth(19_456, 2, 1);
        let dev = tasklane_shared::config::Settings::from_vars(Default::default()).expect("dev");
        assert_eq!(
            (dev.auth.argon2_memory_kib, dev.auth.argon2_iterations, dev.auth.argon2_parallelism),
            (19_456, 2, 1)
        );
        assert!(check_cost(&defaults).is_ok());
        assert!(check_cost(&auth(47_104, 1, 1)).is_ok());
        assert!(check_cost(&auth(65_536, 3, 4)).is_ok());
        for (m, t, p) in [(19_455, 2, 1), (19_456, 1, 1), (4_096, 3, 1), (19_456, 2, 0)] {
            assert!(check_cost(&auth(m, t, p)).is_err(), "m={m} t={t} p={p}");
        }
        assert!(PasswordHasher::new(&auth(8, 1, 1)).is_err());
    }

    #[test]
    fn a_hash_carries_the_configured_parameters() {
        let hasher = PasswordHasher::new(&auth(19_456, 2, 1)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let hash = runtime.block_on(hasher.hash("a long enough passphrase".into())).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        assert_eq!(
            check_policy("password", "password1234", "a@b.co", None).unwrap_err().code,
            "too_weak"
        );
        assert_eq!(
            check_policy("password", "ada.lovelace@example.com", "ada.lovelace@example.com", None)
                .unwrap_err()
                .code,
            "same_as_email"
        );
        assert_eq!(
            check_policy("password", "adalovelace1815", "adalovelace1815@example.com", None)
                .unwrap_err()
                .code,
            "too_weak"
        );
    }

    /// At the default cost: a cheaper one is refused (argon2 is built optimised in dev).
    fn hasher() -> PasswordHasher {
        PasswordHasher::new(&auth(19_456, 2, 1)).expect("valid params")
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        let hasher = hasher();
        let hash = hasher.hash("correct horse battery staple".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"));
        assert!(
            hasher.verify("correct horse battery staple".into(), Some(hash.clone())).await.unwrap()
        );
        assert!(!hasher.verify("wrong horse battery staple".into(), Some(hash)).await.unwrap());
        assert!(!hasher.verify("correct horse battery staple".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn hashing_runs_on_idle_priority_threads_off_the_runtime() {
        let (name, policy) = hasher()
            .pool
            .run(|| {
                (
                    std::thread::current().name().map(str::to_owned),
                    thread_priority::unix::thread_schedule_policy(),
                )
            })
            .await
            .unwrap();
        assert!(name.unwrap_or_default().starts_with("argon2-"));
        #[cfg(target_os = "linux")]
        assert_eq!(
            policy.unwrap(),
            thread_priority::unix::ThreadSchedulePolicy::Normal(
                thread_priority::unix::NormalThreadSchedulePolicy::Idle
            )
        );
    }

    #[test]
    fn a_passphrase_is_accepted() {
        assert!(check_policy("password", "correct horse battery staple", "a@b.co", None).is_ok());
    }
}
