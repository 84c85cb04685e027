//! Durations, sizes and cron expressions as written in config files.

use std::time::Duration;

/// `30s`, `5m`, `1h 30m`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 30s, 5m, 1h30m or 250ms"))
}

/// `512MiB`, `1 GB`, `64k`, or a bare number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("invalid size {s:?}; write e.g. 512MiB, 1GiB, 64KiB or a number of bytes"))
}

/// Standard 5-field cron (minute hour day month weekday), or 6/7 fields with
/// seconds (and year) first. Five-field weekdays follow POSIX cron
/// (0 or 7 = Sunday); the `cron` crate counts 1 = Sunday, so they are mapped.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
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
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("thirty").is_err());
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }

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
