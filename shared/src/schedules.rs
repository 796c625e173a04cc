//! The effective schedule of each scheduled job kind: its `TASKLANE_CRON_<KIND>` override or
//! the default its [`JobSpec`] declares. Written once here, so the worker's tick workers and
//! the API's `GET /admin/schedules` can never disagree on when a kind runs.

use std::str::FromStr;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::jobs::JobSpec;

/// A kind's effective schedule, parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Cron with seconds (`sec min hour day month weekday`), as configured.
    pub expression: String,
    pub cron: cron::Schedule,
}

/// The cron expression a scheduled kind runs on; `None` for kinds without a schedule.
pub fn expression(spec: &JobSpec, settings: &Settings) -> Option<String> {
    let default = spec.schedule?;
    Some(settings.cron.get(spec.kind).cloned().unwrap_or_else(|| default.to_owned()))
}

/// The effective schedule of a kind, parsed; an error names the variable to fix.
pub fn schedule_of(spec: &JobSpec, settings: &Settings) -> anyhow::Result<Option<Schedule>> {
    let Some(expression) = expression(spec, settings) else {
        return Ok(None);
    };
    let cron = cron::Schedule::from_str(&expression).with_context(|| {
        format!(
            "TASKLANE_CRON_{}={expression:?} is not a cron expression with a seconds field \
             (`sec min hour day month weekday`, e.g. \"0 */5 * * * *\")",
            spec.kind.to_ascii_uppercase()
        )
    })?;
    Ok(Some(Schedule { expression, cron }))
}

/// The next time an expression fires; `None` if it does not parse or never fires again.
pub fn next_run(expression: &str) -> Option<DateTime<Utc>> {
    cron::Schedule::from_str(expression).ok()?.upcoming(Utc).next()
}

/// Checks every override names a scheduled kind and parses, so a typo stops start-up.
pub fn validate(settings: &Settings) -> anyhow::Result<()> {
    for kind in settings.cron.keys() {
        let spec = crate::jobs::spec(kind).filter(|spec| spec.schedule.is_some());
        anyhow::ensure!(
            spec.is_some(),
            "TASKLANE_CRON_{} does not name a scheduled job",
            kind.to_ascii_uppercase()
        );
    }
    for spec in crate::jobs::ALL {
        schedule_of(spec, settings)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::jobs::{Job, MarkOverdue, SendEmail};

    fn settings(overrides: &[(&str, &str)]) -> Settings {
        let vars: HashMap<String, String> = overrides
            .iter()
            .map(|(kind, cron)| {
                (format!("TASKLANE_CRON_{}", kind.to_ascii_uppercase()), (*cron).to_owned())
            })
            .collect();
        Settings::from_vars(vars).expect("valid settings")
    }

    #[test]
    fn an_override_replaces_the_default() {
        let defaults = settings(&[]);
        assert_eq!(
            expression(&MarkOverdue::SPEC, &defaults).as_deref(),
            MarkOverdue::SPEC.schedule
        );
        let overridden = settings(&[("mark_overdue", "*/2 * * * * *")]);
        assert_eq!(expression(&MarkOverdue::SPEC, &overridden).as_deref(), Some("*/2 * * * * *"));
        assert!(expression(&SendEmail::SPEC, &overridden).is_none());
    }

    #[test]
    fn a_bad_override_or_an_unscheduled_kind_stops_start_up() {
        let err = validate(&settings(&[("mark_overdue", "every minute")])).expect_err("bad cron");
        assert!(err.to_string().contains("TASKLANE_CRON_MARK_OVERDUE"), "{err}");
        assert!(validate(&settings(&[("send_email", "0 * * * * *")])).is_err());
        assert!(validate(&settings(&[])).is_ok());
    }
}
