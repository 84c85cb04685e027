//! `schedules`: cron expressions (POSIX five-field, or six/seven with
//! seconds), their prompt and timezone.
//!
//! [`parse_cron`] is the one reading of a cron expression: the loader
//! validates with it and [`ScheduleSpec::schedule`](super::ScheduleSpec::schedule)
//! parses with it, so a loaded schedule always parses. This module must
//! never compute run times (that is [`crate::schedule`]).

use marked_yaml::Node;

use super::types::ScheduleSpec;
use crate::yaml::{Cx, Map};

const SCHEDULE_KEYS: &[&str] = &["cron", "prompt", "timezone"];

pub(super) fn decode_schedule(cx: &mut Cx, node: &Node, path: &str) -> Option<ScheduleSpec> {
    let map = Map::open(cx, node, path, SCHEDULE_KEYS)?;
    let cron_node = map.require(cx, "cron");
    let cron = cron_node.and_then(|n| {
        let s = cx.non_empty_string(n, &map.field("cron"))?;
        cx.check(n, &map.field("cron"), parse_cron(&s)).map(|_| s)
    });
    let prompt = map
        .require(cx, "prompt")
        .and_then(|n| cx.non_empty_string(n, &map.field("prompt")));
    let timezone = match map.get("timezone") {
        Some(n) => cx.non_empty_string(n, &map.field("timezone")).and_then(|tz| {
            let ok = tz.parse::<chrono_tz::Tz>().is_ok();
            let r = if ok {
                Ok(tz.clone())
            } else {
                Err(format!(
                    "unknown timezone {tz:?}; use an IANA name such as Europe/Berlin or UTC"
                ))
            };
            cx.check(n, &map.field("timezone"), r)
        }),
        None => Some("UTC".to_owned()),
    };
    Some(ScheduleSpec {
        cron: cron?,
        prompt: prompt?,
        timezone: timezone?,
    })
}

/// Standard 5-field cron (minute hour day month weekday), or 6/7 fields with
/// seconds (and year) first. Five-field weekdays follow POSIX cron
/// (0 or 7 = Sunday); the `cron` crate counts 1 = Sunday, so they are mapped.
pub(super) fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let normalized = match fields.len() {
        5 => {
            let dow = posix_weekdays(fields[4])?;
            format!("0 {} {} {} {} {}", fields[0], fields[1], fields[2], fields[3], dow)
        }
        6 | 7 => fields.join(" "),
        n => {
            return Err(format!(
                "invalid cron expression {expr:?}: expected 5 fields (minute hour day month weekday), or 6-7 with seconds; found {n}"
            ));
        }
    };
    normalized
        .parse::<cron::Schedule>()
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// Maps POSIX numeric weekdays (0-7, Sunday = 0 or 7) to the cron crate's
/// 1-7 (Sunday = 1). Names (`MON`) and `*`/`?` pass through unchanged.
fn posix_weekdays(field: &str) -> Result<String, String> {
    let map_num = |tok: &str| -> Result<String, String> {
        match tok.parse::<u8>() {
            Ok(n @ 0..=6) => Ok((n + 1).to_string()),
            Ok(7) => Ok("1".to_string()),
            Ok(n) => Err(format!("weekday {n} is out of range 0-7")),
            Err(_) => Ok(tok.to_string()),
        }
    };
    let mut out = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let mapped = match range.split_once('-') {
            // 5-7 would become 6-1: spell the wrap-around as two ranges.
            Some((a, b)) => {
                let (ma, mb) = (map_num(a)?, map_num(b)?);
                match (ma.parse::<u8>(), mb.parse::<u8>()) {
                    (Ok(x), Ok(1)) if x > 1 && step.is_none() => format!("{x}-7,1"),
                    _ => format!("{ma}-{mb}"),
                }
            }
            None => map_num(range)?,
        };
        out.push(match step {
            Some(s) => format!("{mapped}/{s}"),
            None => mapped,
        });
    }
    Ok(out.join(","))
}
#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Utc};

    #[test]
    fn five_field_cron_uses_posix_weekdays() {
        // 2026-11-20 is a Friday; "0 9 * * 1" must next fire on Monday the 23rd.
        let s = parse_cron("0 9 * * 1").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        let next = s.after(&after).next().unwrap();
        assert_eq!(next.weekday(), chrono::Weekday::Mon);
        let sun = parse_cron("0 9 * * 0").unwrap().after(&after).next().unwrap();
        assert_eq!(sun.weekday(), chrono::Weekday::Sun);
        let weekend = parse_cron("0 9 * * 6-7").unwrap().after(&after).next().unwrap();
        assert_eq!(weekend.weekday(), chrono::Weekday::Sat);
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("*/1 * * * * *").is_ok());
        assert!(parse_cron("* * *").is_err());
        assert!(parse_cron("61 * * * *").is_err());
    }
}
