//! Checks shared by the configuration and the calls: duration settings, and URLs made fit to
//! print.

use std::time::Duration;

use crate::Error;

/// The longest any duration setting may be (a ttl, a grace, `wait`, `max_hold`, `slot`, a
/// timeout): far beyond any sensible value, and far from where clock arithmetic overflows.
pub(crate) const LONGEST_SETTING: Duration = Duration::from_secs(366 * 24 * 3600);

/// Checks a duration setting named `name`: at most [`LONGEST_SETTING`], and above zero unless
/// `zero_allowed`.
pub(crate) fn check_duration(name: &str, value: Duration, zero_allowed: bool) -> Result<(), Error> {
    if value.is_zero() && !zero_allowed {
        return Err(Error::InvalidConfig(format!(
            "`{name}` must be greater than zero"
        )));
    }
    if value > LONGEST_SETTING {
        return Err(Error::InvalidConfig(format!(
            "`{name}` must be at most {} days, got {value:?}",
            LONGEST_SETTING.as_secs() / (24 * 3600)
        )));
    }
    Ok(())
}

/// Checks a duration that Redis takes in whole milliseconds (`PX`, `PEXPIRE`): from 1 ms to
/// [`LONGEST_SETTING`], whole milliseconds.
pub(crate) fn check_millis(name: &str, value: Duration) -> Result<(), Error> {
    check_duration(name, value, false)?;
    if !value.subsec_nanos().is_multiple_of(1_000_000) || value < Duration::from_millis(1) {
        return Err(Error::InvalidConfig(format!(
            "`{name}` must be a whole number of milliseconds, at least 1ms, got {value:?}"
        )));
    }
    Ok(())
}

/// A URL fit to print: its password, if any, replaced by `***`. A string that does not parse as
/// a URL could hide a password anywhere, so it is not shown at all.
pub(crate) fn redact(url: &str) -> String {
    const HIDDEN: &str = "<unparsable URL hidden>";
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
                return HIDDEN.to_owned();
            }
            parsed.to_string()
        }
        Err(_) => HIDDEN.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://app:hunter2@10.0.0.1"),
            "redis://app:***@10.0.0.1"
        );
        assert_eq!(redact("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
        assert_eq!(redact("not a url hunter2"), "<unparsable URL hidden>");
    }
}
