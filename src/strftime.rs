//! `strftime_now(format)` for chat templates (Llama 3.2's writes today's date with it, as
//! transformers and llama.cpp provide it): the current UTC time through Python's common
//! `strftime` directives.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A UTC time broken down.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    /// Day of the year, 1-based.
    yday: u32,
    /// 0 = Monday.
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// Seconds since the Unix epoch as a UTC calendar time (days-from-civil, inverted).
fn civil(secs: i64) -> Civil {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = BEFORE[month as usize - 1] + day + u32::from(leap && month > 2);
    Civil {
        year,
        month,
        day,
        yday,
        weekday: (days + 3).rem_euclid(7) as u32,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
    }
}

/// `format` with `%d %e %m %y %Y %b %B %h %a %A %H %I %p %M %S %j %F %T %%` replaced for the UTC
/// time `secs`; other directives are kept as written.
pub fn format_utc(secs: i64, format: &str) -> String {
    let c = civil(secs);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let month = MONTHS[c.month as usize - 1];
        let day = DAYS[c.weekday as usize];
        let text = match d {
            'd' => format!("{:02}", c.day),
            'e' => format!("{:2}", c.day),
            'm' => format!("{:02}", c.month),
            'y' => format!("{:02}", c.year.rem_euclid(100)),
            'Y' => c.year.to_string(),
            'b' | 'h' => month[..3].to_string(),
            'B' => month.to_string(),
            'a' => day[..3].to_string(),
            'A' => day.to_string(),
            'H' => format!("{:02}", c.hour),
            'I' => format!("{:02}", (c.hour + 11) % 12 + 1),
            'p' => (if c.hour < 12 { "AM" } else { "PM" }).to_string(),
            'M' => format!("{:02}", c.minute),
            'S' => format!("{:02}", c.second),
            'j' => format!("{:03}", c.yday),
            'F' => format!("{}-{:02}-{:02}", c.year, c.month, c.day),
            'T' => format!("{:02}:{:02}:{:02}", c.hour, c.minute, c.second),
            '%' => "%".to_string(),
            other => format!("%{other}"),
        };
        out.push_str(&text);
    }
    out
}

/// `format` for the current UTC time.
pub fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_utc(secs, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_times_format_as_python_does() {
        // datetime.utcfromtimestamp(t).strftime(...) in Python.
        assert_eq!(
            format_utc(0, "%d %b %Y %H:%M:%S %a %j"),
            "01 Jan 1970 00:00:00 Thu 001"
        );
        assert_eq!(format_utc(1_721_952_000, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            format_utc(951_782_400, "%F %A %j %B"),
            "2000-02-29 Tuesday 060 February"
        );
        assert_eq!(
            format_utc(1_796_688_000 + 13 * 3600 + 5, "%I %p %T %y %e %%"),
            "01 PM 13:00:05 26  8 %"
        );
        assert_eq!(format_utc(-86_400, "%F"), "1969-12-31");
        assert_eq!(format_utc(0, "%Q %"), "%Q %");
    }
}
