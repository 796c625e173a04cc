//! Reading one variable at a time: defaults that apply everywhere or only outside prod,
//! parsing, and every problem collected rather than the first one returned, so a start-up
//! reports them all at once.

use std::collections::HashMap;

use secrecy::SecretString;

use super::Environment;

/// Reads variables, applying defaults outside prod and collecting problems.
pub(super) struct Reader {
    pub(super) vars: HashMap<String, String>,
    pub(super) problems: Vec<String>,
    pub(super) env: Environment,
}

impl Reader {
    pub(super) fn raw(&self, key: &str) -> Option<String> {
        self.vars.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// A setting that has a default only outside prod (connection strings, credentials).
    pub(super) fn string(&mut self, key: &str, dev_default: &str) -> String {
        match self.raw(key) {
            Some(value) => value,
            None if self.env == Environment::Prod => {
                self.problems.push(format!("{key} is required in prod"));
                String::new()
            }
            None => dev_default.to_owned(),
        }
    }

    /// A setting whose default is fine everywhere (tuning, names).
    pub(super) fn string_any(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    pub(super) fn secret(&mut self, key: &str, dev_default: &str) -> SecretString {
        SecretString::from(self.string(key, dev_default))
    }

    fn parse_or_report<T: std::str::FromStr>(&mut self, key: &str, raw: String, default: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        match raw.parse() {
            Ok(value) => value,
            Err(err) => {
                self.problems.push(format!("{key}={raw:?} is invalid: {err}"));
                default.parse().unwrap_or_else(|_| unreachable!("defaults parse"))
            }
        }
    }

    pub(super) fn parsed<T: std::str::FromStr>(&mut self, key: &str, dev_default: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.string(key, dev_default);
        let raw = if raw.is_empty() { dev_default.to_owned() } else { raw };
        self.parse_or_report(key, raw, dev_default)
    }

    pub(super) fn parsed_any<T: std::str::FromStr>(&mut self, key: &str, default: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.string_any(key, default);
        self.parse_or_report(key, raw, default)
    }
}
