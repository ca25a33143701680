//! Cron expressions and their ticks, in UTC, in whole seconds.

use chrono::{DateTime, Timelike, Utc};
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// The first tick of `cron` after `after` (croner keeps the fraction of a second it is given:
/// ticks are whole seconds).
pub(super) fn next_tick(cron: &Cron, after: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
    cron.find_next_occurrence(&whole_second(after), false)
}

/// The last tick of `cron` at or before `at`.
pub(super) fn latest_tick(cron: &Cron, at: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
    cron.find_previous_occurrence(&whole_second(at), true)
}

fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0).unwrap_or(at)
}

/// Parses a cron expression of five fields, or six with seconds first.
pub(super) fn parse(expression: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|err| {
            format!(
                "the cron expression {expression:?} is not valid: {err}; write five fields \
                 (`min hour day-of-month month day-of-week`) or six with seconds first, such as \
                 \"0 0 2 * * *\" for 02:00:00 UTC every day"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{SystemTime, UNIX_EPOCH};

    use crate::slot::Period;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    #[test]
    fn five_and_six_fields_are_read_in_utc() {
        let daily = parse("0 0 2 * * *").unwrap();
        let next = next_tick(&daily, at("2025-03-01T01:59:59.500Z")).unwrap();
        assert_eq!(next, at("2025-03-01T02:00:00Z"));
        let five = parse("30 3 * * MON").unwrap();
        let next = next_tick(&five, at("2025-03-01T00:00:00Z")).unwrap();
        assert_eq!(next, at("2025-03-03T03:30:00Z"), "a Monday, second 0");
    }

    #[test]
    fn a_tick_is_a_period_named_by_its_time() {
        let tick = at("2025-03-01T02:00:00Z");
        let next = at("2025-03-02T02:00:00Z");
        let period = Period::tick(tick.into(), next.into());
        assert_eq!(period.start(), SystemTime::from(tick));
        let unix_ms = SystemTime::from(tick)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(period.index(), unix_ms);
    }

    #[test]
    fn a_bad_expression_says_what_to_write() {
        let err = parse("every day at two").unwrap_err();
        assert!(err.contains("\"every day at two\""), "{err}");
        assert!(err.contains("0 0 2 * * *"), "{err}");
    }

    #[test]
    fn next_and_previous_ticks_straddle_now_within_a_second() {
        let every_second = parse("* * * * * *").unwrap();
        let now = at("2025-03-01T02:00:00.250Z");
        assert_eq!(
            next_tick(&every_second, now).unwrap(),
            at("2025-03-01T02:00:01Z")
        );
        assert_eq!(
            latest_tick(&every_second, now).unwrap(),
            at("2025-03-01T02:00:00Z")
        );
    }
}
