//! Feature flags as the code consults them (SPEC section 5): the flags the code knows, and
//! whether one is on for a user.
//!
//! A flag is on for a user when it is enabled and the user is on its allow list or falls in
//! its rollout: the user's bucket, `sha256("<key>:<user id>") mod 100`, is below
//! `rollout_percent`. Buckets are stable (the same user stays in or out as the percentage
//! grows) and independent across flags. A flag without a row has its built-in default.

use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Flags the code knows, with their value when no admin has set them.
pub const DEFAULTS: &[(&str, bool)] = &[("task_search", true)];

/// Gates `q` on `GET /tasks`.
pub const TASK_SEARCH: &str = "task_search";

/// A set flag's settings, as evaluation reads them.
#[derive(Debug, Clone, Copy)]
pub struct Rule<'a> {
    /// The master switch: off means off for everyone.
    pub enabled: bool,
    /// 0-100: the share of users (by stable bucket) who get it.
    pub rollout_percent: i16,
    /// Users who get it whatever the percentage (when enabled).
    pub allow_users: &'a [Uuid],
}

/// Whether a flag is on for a user; `None` when no admin set it (its built-in default).
pub fn evaluate(rule: Option<Rule<'_>>, key: &str, user: Uuid) -> bool {
    match rule {
        None => DEFAULTS.iter().find(|(k, _)| *k == key).is_some_and(|(_, on)| *on),
        Some(rule) => {
            rule.enabled
                && (rule.allow_users.contains(&user) || bucket(key, user) < rule.rollout_percent)
        }
    }
}

fn bucket(key: &str, user: Uuid) -> i16 {
    let digest = Sha256::digest(format!("{key}:{user}").as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    i16::try_from(n % 100).unwrap_or(0)
}

/// Whether `key` is on for `user`, reading the flag.
pub async fn is_on(db: impl PgExecutor<'_>, key: &str, user: Uuid) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        "select enabled, rollout_percent, allow_users from feature_flags where key = $1",
        key
    )
    .fetch_optional(db)
    .await?;
    let rule = row.as_ref().map(|row| Rule {
        enabled: row.enabled,
        rollout_percent: row.rollout_percent,
        allow_users: &row.allow_users,
    });
    Ok(evaluate(rule, key, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(enabled: bool, rollout_percent: i16, allow_users: &[Uuid]) -> Option<Rule<'_>> {
        Some(Rule { enabled, rollout_percent, allow_users })
    }

    #[test]
    fn rollout_is_stable_and_close_to_its_percentage() {
        let users: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
        let on =
            |rollout| users.iter().filter(|u| evaluate(rule(true, rollout, &[]), "f", **u)).count();
        let (ten, fifty) = (on(10), on(50));
        assert!((100..=300).contains(&ten), "{ten}");
        assert!((850..=1150).contains(&fifty), "{fifty}");
        // Growing the rollout only adds users.
        assert!(
            users.iter().all(|u| !evaluate(rule(true, 10, &[]), "f", *u)
                || evaluate(rule(true, 50, &[]), "f", *u))
        );
    }

    #[test]
    fn allow_list_and_master_switch() {
        let user = Uuid::now_v7();
        assert!(evaluate(rule(true, 0, &[user]), "f", user));
        assert!(!evaluate(rule(false, 100, &[user]), "f", user));
        assert!(evaluate(None, TASK_SEARCH, user), "the built-in default");
        assert!(!evaluate(None, "unknown", user));
    }
}
