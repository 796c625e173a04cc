//! Account security services, below the routes and below [`crate::state`]: password
//! policy and hashing, access and refresh tokens, the cache of callers' accounts and its
//! change announcements, login throttling and the client's IP. None of them knows
//! `AppState`; the bearer scheme that reads it is [`crate::security`].

pub mod accounts;
pub mod announcements;
pub mod client_ip;
pub mod password;
pub mod throttle;
pub mod tokens;

/// What an account may do; defined with the other account states in the domain.
pub use tasklane_shared::domain::users::Role;

/// Normalises an email address (trimmed, lowercased) and checks its shape; the same rule
/// for registering, logging in and resetting, so the address is unique case-insensitively.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let plain =
        |part: &str| !part.is_empty() && !part.chars().any(|c| c.is_whitespace() || c.is_control());
    let ok = email.len() <= 254
        && local.len() <= 64
        && plain(local)
        && plain(domain)
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.');
    ok.then_some(email)
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(normalize_email("  Ada@Example.COM ").as_deref(), Some("ada@example.com"));
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@example.com",
            "ada@.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
    }
}
