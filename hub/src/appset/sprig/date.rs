//! Sprig's date functions (masterminds.github.io/sprig/date.html).
//!
//! A template value has no time type, so a time is carried as the string Go
//! prints for a `time.Time` (`2006-01-02 15:04:05.999999999 -0700 MST`, as
//! `{{ now }}` renders in Argo CD); every date function reads that form
//! back. Layouts are Go's reference-time layouts.

use gtmpl_ng::{Func, FuncError, NumberKind, Value};
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, Zoned};

use super::{Res, arg, fail, string_arg, want};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("now", now),
    ("ago", ago),
    ("date", date),
    ("date_in_zone", date_in_zone),
    ("dateInZone", date_in_zone),
    ("htmlDate", html_date),
    ("htmlDateInZone", html_date_in_zone),
    ("date_modify", date_modify),
    ("dateModify", date_modify),
    ("must_date_modify", must_date_modify),
    ("mustDateModify", must_date_modify),
    ("duration", duration),
    ("durationRound", duration_round),
    ("toDate", to_date),
    ("mustToDate", must_to_date),
    ("unixEpoch", unix_epoch),
];

/// Go's `time.Time.String()` layout.
const TIME_STRING: &str = "2006-01-02 15:04:05.999999999 -0700 MST";

fn zone(name: &str) -> Option<TimeZone> {
    match name {
        "" | "UTC" => Some(TimeZone::UTC),
        "Local" => Some(TimeZone::system()),
        other => TimeZone::get(other).ok(),
    }
}

/// Renders a time as Go's `time.Time.String()` does.
pub(super) fn time_value(t: &Zoned) -> Value {
    Value::String(format_go(t, TIME_STRING))
}

/// A time argument: our time string, or (as Go's switch has it) an integer
/// of Unix seconds; anything else means "now".
fn time_arg(v: &Value) -> Zoned {
    match v {
        Value::String(s) => parse_time_string(s).unwrap_or_else(Zoned::now),
        Value::Number(n) => match n.kind() {
            NumberKind::Signed(i) => unix(i),
            NumberKind::Unsigned(u) => unix(u as i64),
            NumberKind::Float(_) => Zoned::now(),
        },
        _ => Zoned::now(),
    }
}

fn unix(secs: i64) -> Zoned {
    Timestamp::from_second(secs)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(TimeZone::system())
}

/// A `time.Time` parameter: only a time will do.
fn strict_time(name: &str, args: &[Value], i: usize) -> Result<Zoned, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => parse_time_string(s).ok_or_else(|| {
            fail(format!(
                "wrong type for value; expected time.Time; got string {s:?}"
            ))
        }),
        Some(other) => Err(fail(format!(
            "wrong type for value; expected time.Time; got {}",
            super::go_type(other)
        ))),
        None => Err(fail(format!("wrong number of args for {name}"))),
    }
}

fn parse_time_string(s: &str) -> Option<Zoned> {
    parse_go(TIME_STRING, s, &TimeZone::UTC).ok()
}

fn now(args: &[Value]) -> Res {
    want("now", args, 0)?;
    Ok(time_value(&Zoned::now()))
}

fn ago(args: &[Value]) -> Res {
    want("ago", args, 1)?;
    let t = time_arg(arg(args, 0));
    let nanos = Timestamp::now().as_nanosecond() - t.timestamp().as_nanosecond();
    // time.Since(t).Round(time.Second)
    let secs = (nanos as f64 / 1e9).round() as i128;
    Ok(Value::String(go_duration(secs * 1_000_000_000)))
}

fn in_zone(t: &Value, layout: &str, zone_name: &str) -> Value {
    let tz = zone(zone_name).unwrap_or(TimeZone::UTC);
    let t = time_arg(t).with_time_zone(tz);
    Value::String(format_go(&t, layout))
}

fn date(args: &[Value]) -> Res {
    want("date", args, 2)?;
    let layout = string_arg("date", args, 0)?;
    Ok(in_zone(arg(args, 1), &layout, "Local"))
}

fn date_in_zone(args: &[Value]) -> Res {
    want("dateInZone", args, 3)?;
    let layout = string_arg("dateInZone", args, 0)?;
    let zone = string_arg("dateInZone", args, 2)?;
    Ok(in_zone(arg(args, 1), &layout, &zone))
}

fn html_date(args: &[Value]) -> Res {
    want("htmlDate", args, 1)?;
    Ok(in_zone(arg(args, 0), "2006-01-02", "Local"))
}

fn html_date_in_zone(args: &[Value]) -> Res {
    want("htmlDateInZone", args, 2)?;
    let zone = string_arg("htmlDateInZone", args, 1)?;
    Ok(in_zone(arg(args, 0), "2006-01-02", &zone))
}

fn modify(name: &str, args: &[Value], strict: bool) -> Res {
    want(name, args, 2)?;
    let text = string_arg(name, args, 0)?;
    let t = strict_time(name, args, 1)?;
    match parse_go_duration(&text) {
        Ok(nanos) => {
            let ts = Timestamp::from_nanosecond(t.timestamp().as_nanosecond() + nanos)
                .map_err(|e| fail(format!("error calling {name}: {e}")))?;
            Ok(time_value(&ts.to_zoned(t.time_zone().clone())))
        }
        Err(e) if strict => Err(fail(format!("error calling {name}: {e}"))),
        Err(_) => Ok(time_value(&t)),
    }
}

fn date_modify(args: &[Value]) -> Res {
    modify("dateModify", args, false)
}

fn must_date_modify(args: &[Value]) -> Res {
    modify("mustDateModify", args, true)
}

fn duration(args: &[Value]) -> Res {
    want("duration", args, 1)?;
    // Sprig accepts a string or an int64; a template's integer literal is an
    // int, which falls through to zero.
    let secs: i128 = match arg(args, 0) {
        Value::String(s) => s.parse::<i64>().unwrap_or(0).into(),
        _ => 0,
    };
    Ok(Value::String(go_duration(secs * 1_000_000_000)))
}

fn duration_round(args: &[Value]) -> Res {
    want("durationRound", args, 1)?;
    let nanos: i128 = match arg(args, 0) {
        Value::String(s) => match parse_time_string(s) {
            Some(t) => Timestamp::now().as_nanosecond() - t.timestamp().as_nanosecond(),
            None => parse_go_duration(s).unwrap_or(0),
        },
        _ => 0,
    };
    let u = nanos.unsigned_abs();
    const SECOND: u128 = 1_000_000_000;
    let units: [(u128, &str); 6] = [
        (SECOND * 3600 * 24 * 365, "y"),
        (SECOND * 3600 * 24 * 30, "mo"),
        (SECOND * 3600 * 24, "d"),
        (SECOND * 3600, "h"),
        (SECOND * 60, "m"),
        (SECOND, "s"),
    ];
    for (size, unit) in units {
        if u > size {
            return Ok(Value::String(format!("{}{unit}", u / size)));
        }
    }
    Ok(Value::from("0s"))
}

fn to_date_with(name: &str, args: &[Value]) -> Result<Zoned, FuncError> {
    want(name, args, 2)?;
    let layout = string_arg(name, args, 0)?;
    let text = string_arg(name, args, 1)?;
    parse_go(&layout, &text, &TimeZone::system())
        .map_err(|e| fail(format!("error calling {name}: {e}")))
}

fn to_date(args: &[Value]) -> Res {
    match to_date_with("toDate", args) {
        Ok(t) => Ok(time_value(&t)),
        Err(_) if args.len() == 2 => Ok(Value::from("0001-01-01 00:00:00 +0000 UTC")),
        Err(e) => Err(e),
    }
}

fn must_to_date(args: &[Value]) -> Res {
    Ok(time_value(&to_date_with("mustToDate", args)?))
}

fn unix_epoch(args: &[Value]) -> Res {
    want("unixEpoch", args, 1)?;
    let t = strict_time("unixEpoch", args, 0)?;
    Ok(Value::String(t.timestamp().as_second().to_string()))
}

/// Go's `time.Duration.String()`.
pub(super) fn go_duration(nanos: i128) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        // Sub-second: ns, µs or ms with a fraction.
        let (unit, div) = if u < 1_000 {
            ("ns", 1u128)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&frac(u, div));
        out.push_str(unit);
    } else {
        let h = u / 3_600_000_000_000;
        let m = (u / 60_000_000_000) % 60;
        let s_nanos = u % 60_000_000_000;
        if h > 0 {
            out.push_str(&format!("{h}h{m}m"));
        } else if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&frac(s_nanos, 1_000_000_000));
        out.push('s');
    }
    if neg { format!("-{out}") } else { out }
}

fn frac(v: u128, div: u128) -> String {
    let whole = v / div;
    let rest = v % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Go's `time.ParseDuration`.
pub(super) fn parse_go_duration(text: &str) -> Result<i128, String> {
    let err = || format!("time: invalid duration {}", super::go_quote(text));
    let (neg, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let num = &s[..num_end];
        if num.is_empty() || num == "." {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        s = &s[num_end..];
        let unit_end = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let unit = &s[..unit_end];
        s = &s[unit_end..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    super::go_quote(text)
                ));
            }
            other => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    super::go_quote(other),
                    super::go_quote(text)
                ));
            }
        };
        total += value * scale;
    }
    if total > i64::MAX as f64 {
        return Err(err());
    }
    let n = total.round() as i128;
    Ok(if neg { -n } else { n })
}

/// A token of a Go reference-time layout.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(String),
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    PM,
    Pm,
    TZ,
    /// Numeric zone: (`Z` for UTC, with colons, with seconds, hours only).
    Zone {
        z: bool,
        colon: bool,
        seconds: bool,
        hours_only: bool,
    },
    /// Fractional seconds: digits, trailing zeros trimmed (`9`s), separator.
    Frac {
        digits: usize,
        trim: bool,
        sep: char,
    },
}

/// Splits a layout into tokens as Go's `nextStdChunk` does.
fn tokens(layout: &str) -> Vec<Tok> {
    let b = layout.as_bytes();
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    let starts = |i: usize, p: &str| layout[i..].starts_with(p);
    while i < b.len() {
        let (tok, len): (Option<Tok>, usize) = match b[i] {
            b'J' if starts(i, "January") => (Some(Tok::LongMonth), 7),
            b'J' if starts(i, "Jan") => (Some(Tok::Month), 3),
            b'M' if starts(i, "Monday") => (Some(Tok::LongWeekDay), 6),
            b'M' if starts(i, "Mon") => (Some(Tok::WeekDay), 3),
            b'M' if starts(i, "MST") => (Some(Tok::TZ), 3),
            b'0' if starts(i, "002") => (Some(Tok::ZeroYearDay), 3),
            b'0' if i + 1 < b.len() && (b'1'..=b'6').contains(&b[i + 1]) => (
                Some(match b[i + 1] {
                    b'1' => Tok::ZeroMonth,
                    b'2' => Tok::ZeroDay,
                    b'3' => Tok::ZeroHour12,
                    b'4' => Tok::ZeroMinute,
                    b'5' => Tok::ZeroSecond,
                    _ => Tok::Year,
                }),
                2,
            ),
            b'1' if starts(i, "15") => (Some(Tok::Hour), 2),
            b'1' => (Some(Tok::NumMonth), 1),
            b'2' if starts(i, "2006") => (Some(Tok::LongYear), 4),
            b'2' => (Some(Tok::Day), 1),
            b'_' if starts(i, "__2") => (Some(Tok::UnderYearDay), 3),
            b'_' if starts(i, "_2006") => {
                lit.push('_');
                (Some(Tok::LongYear), 5)
            }
            b'_' if starts(i, "_2") => (Some(Tok::UnderDay), 2),
            b'3' => (Some(Tok::Hour12), 1),
            b'4' => (Some(Tok::Minute), 1),
            b'5' => (Some(Tok::Second), 1),
            b'P' if starts(i, "PM") => (Some(Tok::PM), 2),
            b'p' if starts(i, "pm") => (Some(Tok::Pm), 2),
            b'-' | b'Z' => {
                let z = b[i] == b'Z';
                let rest = &layout[i + 1..];
                let forms: [(&str, bool, bool, bool); 5] = [
                    ("07:00:00", true, true, false),
                    ("070000", false, true, false),
                    ("07:00", true, false, false),
                    ("0700", false, false, false),
                    ("07", false, false, true),
                ];
                match forms.iter().find(|(p, ..)| rest.starts_with(p)) {
                    Some((p, colon, seconds, hours_only)) => (
                        Some(Tok::Zone {
                            z,
                            colon: *colon,
                            seconds: *seconds,
                            hours_only: *hours_only,
                        }),
                        p.len() + 1,
                    ),
                    None => (None, 1),
                }
            }
            b'.' | b',' if i + 1 < b.len() && (b[i + 1] == b'0' || b[i + 1] == b'9') => {
                let digit = b[i + 1];
                let mut j = i + 1;
                while j < b.len() && b[j] == digit {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    (None, 1)
                } else {
                    (
                        Some(Tok::Frac {
                            digits: j - i - 1,
                            trim: digit == b'9',
                            sep: char::from(b[i]),
                        }),
                        j - i,
                    )
                }
            }
            _ => (None, 0),
        };
        match tok {
            Some(t) => {
                if !lit.is_empty() {
                    out.push(Tok::Lit(std::mem::take(&mut lit)));
                }
                out.push(t);
                i += len;
            }
            None => {
                let c = layout[i..].chars().next().unwrap_or(' ');
                lit.push(c);
                i += c.len_utf8();
            }
        }
    }
    if !lit.is_empty() {
        out.push(Tok::Lit(lit));
    }
    out
}

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
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn abbreviation(t: &Zoned) -> String {
    let info = t.time_zone().to_offset_info(t.timestamp());
    let abbr = info.abbreviation();
    if abbr.is_empty() || abbr.starts_with(['+', '-']) {
        // Go prints a zone without a name as its offset, e.g. "+0530".
        let secs = t.offset().seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let a = secs.unsigned_abs();
        if a.is_multiple_of(3600) {
            format!("{sign}{:02}", a / 3600)
        } else {
            format!("{sign}{:02}{:02}", a / 3600, a / 60 % 60)
        }
    } else {
        abbr.to_owned()
    }
}

/// Go's `time.Time.Format`.
pub(super) fn format_go(t: &Zoned, layout: &str) -> String {
    let mut out = String::new();
    for tok in tokens(layout) {
        match tok {
            Tok::Lit(s) => out.push_str(&s),
            Tok::LongMonth => out.push_str(MONTHS[t.month() as usize - 1]),
            Tok::Month => out.push_str(&MONTHS[t.month() as usize - 1][..3]),
            Tok::NumMonth => out.push_str(&t.month().to_string()),
            Tok::ZeroMonth => out.push_str(&format!("{:02}", t.month())),
            Tok::LongWeekDay => out.push_str(DAYS[t.weekday().to_sunday_zero_offset() as usize]),
            Tok::WeekDay => out.push_str(&DAYS[t.weekday().to_sunday_zero_offset() as usize][..3]),
            Tok::Day => out.push_str(&t.day().to_string()),
            Tok::UnderDay => out.push_str(&format!("{:>2}", t.day())),
            Tok::ZeroDay => out.push_str(&format!("{:02}", t.day())),
            Tok::UnderYearDay => out.push_str(&format!("{:>3}", t.day_of_year())),
            Tok::ZeroYearDay => out.push_str(&format!("{:03}", t.day_of_year())),
            Tok::Hour => out.push_str(&format!("{:02}", t.hour())),
            Tok::Hour12 => out.push_str(&hour12(t.hour()).to_string()),
            Tok::ZeroHour12 => out.push_str(&format!("{:02}", hour12(t.hour()))),
            Tok::Minute => out.push_str(&t.minute().to_string()),
            Tok::ZeroMinute => out.push_str(&format!("{:02}", t.minute())),
            Tok::Second => out.push_str(&t.second().to_string()),
            Tok::ZeroSecond => out.push_str(&format!("{:02}", t.second())),
            Tok::LongYear => out.push_str(&format!("{:04}", t.year())),
            Tok::Year => out.push_str(&format!("{:02}", t.year().rem_euclid(100))),
            Tok::PM => out.push_str(if t.hour() >= 12 { "PM" } else { "AM" }),
            Tok::Pm => out.push_str(if t.hour() >= 12 { "pm" } else { "am" }),
            Tok::TZ => out.push_str(&abbreviation(t)),
            Tok::Zone {
                z,
                colon,
                seconds,
                hours_only,
            } => {
                let secs = t.offset().seconds();
                if z && secs == 0 {
                    out.push('Z');
                    continue;
                }
                let a = secs.unsigned_abs();
                out.push(if secs < 0 { '-' } else { '+' });
                out.push_str(&format!("{:02}", a / 3600));
                if !hours_only {
                    if colon {
                        out.push(':');
                    }
                    out.push_str(&format!("{:02}", a / 60 % 60));
                }
                if seconds {
                    if colon {
                        out.push(':');
                    }
                    out.push_str(&format!("{:02}", a % 60));
                }
            }
            Tok::Frac { digits, trim, sep } => {
                let nanos = format!("{:09}", t.subsec_nanosecond());
                let cut = &nanos[..digits.min(9)];
                if trim {
                    let cut = cut.trim_end_matches('0');
                    if !cut.is_empty() {
                        out.push(sep);
                        out.push_str(cut);
                    }
                } else {
                    out.push(sep);
                    out.push_str(cut);
                    out.push_str(&"0".repeat(digits.saturating_sub(9)));
                }
            }
        }
    }
    out
}

fn hour12(h: i8) -> i8 {
    match h % 12 {
        0 => 12,
        other => other,
    }
}

/// Go's `time.ParseInLocation` for the layouts templates use.
pub(super) fn parse_go(layout: &str, value: &str, loc: &TimeZone) -> Result<Zoned, String> {
    let err = |elem: &str, rest: &str| {
        format!(
            "parsing time {} as {}: cannot parse {} as {}",
            super::go_quote(value),
            super::go_quote(layout),
            super::go_quote(rest),
            super::go_quote(elem)
        )
    };
    let (mut year, mut month, mut day, mut hour, mut min, mut sec, mut nanos) =
        (1i16, 1i8, 1i8, 0i8, 0i8, 0i8, 0i32);
    let mut pm: Option<bool> = None;
    let mut offset: Option<i32> = None;
    let mut zone_abbr: Option<String> = None;
    let mut rest = value;
    fn digits(s: &str, min: usize, max: usize) -> Option<(i64, usize)> {
        let n = s.bytes().take(max).take_while(u8::is_ascii_digit).count();
        if n < min {
            return None;
        }
        s[..n].parse().ok().map(|v| (v, n))
    }
    for tok in tokens(layout) {
        let before = rest;
        let name = format!("{tok:?}");
        let bad = || err(&name, before);
        match tok {
            Tok::Lit(s) => {
                rest = rest
                    .strip_prefix(s.as_str())
                    .ok_or_else(|| err(&s, before))?;
            }
            Tok::LongMonth | Tok::Month => {
                let idx = MONTHS
                    .iter()
                    .position(|m| {
                        let m = if tok == Tok::Month { &m[..3] } else { m };
                        rest.len() >= m.len() && rest[..m.len()].eq_ignore_ascii_case(m)
                    })
                    .ok_or_else(bad)?;
                let len = if tok == Tok::Month {
                    3
                } else {
                    MONTHS[idx].len()
                };
                month = idx as i8 + 1;
                rest = &rest[len..];
            }
            Tok::LongWeekDay | Tok::WeekDay => {
                let len = DAYS
                    .iter()
                    .map(|d| if tok == Tok::WeekDay { &d[..3] } else { d })
                    .find(|d| rest.len() >= d.len() && rest[..d.len()].eq_ignore_ascii_case(d))
                    .map(str::len)
                    .ok_or_else(bad)?;
                rest = &rest[len..];
            }
            Tok::NumMonth | Tok::ZeroMonth => {
                let (v, n) =
                    digits(rest, if tok == Tok::ZeroMonth { 2 } else { 1 }, 2).ok_or_else(bad)?;
                month = v as i8;
                rest = &rest[n..];
            }
            Tok::Day | Tok::ZeroDay | Tok::UnderDay => {
                if tok == Tok::UnderDay {
                    rest = rest.strip_prefix(' ').unwrap_or(rest);
                }
                let (v, n) =
                    digits(rest, if tok == Tok::ZeroDay { 2 } else { 1 }, 2).ok_or_else(bad)?;
                day = v as i8;
                rest = &rest[n..];
            }
            Tok::UnderYearDay | Tok::ZeroYearDay => {
                let (_, n) = digits(rest.trim_start(), 3, 3).ok_or_else(bad)?;
                rest = &rest.trim_start()[n..];
            }
            Tok::Hour => {
                let (v, n) = digits(rest, 2, 2).ok_or_else(bad)?;
                hour = v as i8;
                rest = &rest[n..];
            }
            Tok::Hour12 | Tok::ZeroHour12 => {
                let (v, n) =
                    digits(rest, if tok == Tok::ZeroHour12 { 2 } else { 1 }, 2).ok_or_else(bad)?;
                hour = v as i8;
                rest = &rest[n..];
            }
            Tok::Minute | Tok::ZeroMinute => {
                let (v, n) =
                    digits(rest, if tok == Tok::ZeroMinute { 2 } else { 1 }, 2).ok_or_else(bad)?;
                min = v as i8;
                rest = &rest[n..];
            }
            Tok::Second | Tok::ZeroSecond => {
                let (v, n) =
                    digits(rest, if tok == Tok::ZeroSecond { 2 } else { 1 }, 2).ok_or_else(bad)?;
                sec = v as i8;
                rest = &rest[n..];
                // Go accepts a fraction after seconds even when the layout
                // has none.
                if let Some(f) = rest.strip_prefix(['.', ',']) {
                    let n = f.bytes().take_while(u8::is_ascii_digit).count();
                    if n > 0 && !layout_has_frac(layout) {
                        nanos = frac_nanos(&f[..n]);
                        rest = &f[n..];
                    }
                }
            }
            Tok::LongYear => {
                let (v, n) = digits(rest, 4, 4).ok_or_else(bad)?;
                year = v as i16;
                rest = &rest[n..];
            }
            Tok::Year => {
                let (v, n) = digits(rest, 2, 2).ok_or_else(bad)?;
                year = if v >= 69 {
                    1900 + v as i16
                } else {
                    2000 + v as i16
                };
                rest = &rest[n..];
            }
            Tok::PM | Tok::Pm => {
                let p = rest.get(..2).ok_or_else(bad)?;
                pm = match p.to_ascii_uppercase().as_str() {
                    "PM" => Some(true),
                    "AM" => Some(false),
                    _ => return Err(bad()),
                };
                rest = &rest[2..];
            }
            Tok::TZ => {
                let n = rest.bytes().take_while(u8::is_ascii_uppercase).count();
                if n < 3 && !rest.starts_with("UTC") {
                    return Err(bad());
                }
                zone_abbr = Some(rest[..n].to_owned());
                rest = &rest[n..];
            }
            Tok::Zone {
                z,
                colon,
                seconds,
                hours_only,
            } => {
                if z && rest.starts_with('Z') {
                    offset = Some(0);
                    rest = &rest[1..];
                    continue;
                }
                let sign = match rest.as_bytes().first() {
                    Some(b'+') => 1,
                    Some(b'-') => -1,
                    _ => return Err(bad()),
                };
                rest = &rest[1..];
                let (h, n) = digits(rest, 2, 2).ok_or_else(bad)?;
                rest = &rest[n..];
                let mut total = h * 3600;
                if !hours_only {
                    if colon {
                        rest = rest.strip_prefix(':').ok_or_else(bad)?;
                    }
                    let (m, n) = digits(rest, 2, 2).ok_or_else(bad)?;
                    rest = &rest[n..];
                    total += m * 60;
                }
                if seconds {
                    if colon {
                        rest = rest.strip_prefix(':').ok_or_else(bad)?;
                    }
                    let (s, n) = digits(rest, 2, 2).ok_or_else(bad)?;
                    rest = &rest[n..];
                    total += s;
                }
                offset = Some(sign * total as i32);
            }
            Tok::Frac {
                digits: d,
                trim,
                sep,
            } => {
                let Some(f) = rest.strip_prefix(sep) else {
                    if trim {
                        continue;
                    }
                    return Err(bad());
                };
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                if !trim && n != d || n == 0 {
                    return Err(bad());
                }
                nanos = frac_nanos(&f[..n]);
                rest = &f[n..];
            }
        }
    }
    if !rest.is_empty() {
        return Err(format!(
            "parsing time {}: extra text: {}",
            super::go_quote(value),
            super::go_quote(rest)
        ));
    }
    match pm {
        Some(true) if hour < 12 => hour += 12,
        Some(false) if hour == 12 => hour = 0,
        _ => {}
    }
    let civil = jiff::civil::DateTime::new(year, month, day, hour, min, sec, nanos)
        .map_err(|e| format!("parsing time {}: {e}", super::go_quote(value)))?;
    let tz = match (offset, zone_abbr.as_deref()) {
        (Some(o), _) => {
            let off = Offset::from_seconds(o).map_err(|e| e.to_string())?;
            // Go keeps the location's name when the offset agrees with it.
            match civil.to_zoned(loc.clone()) {
                Ok(z) if z.offset() == off => return Ok(z),
                _ => TimeZone::fixed(off),
            }
        }
        (None, Some("UTC")) => TimeZone::UTC,
        _ => loc.clone(),
    };
    civil
        .to_zoned(tz)
        .map_err(|e| format!("parsing time {}: {e}", super::go_quote(value)))
}

fn layout_has_frac(layout: &str) -> bool {
    tokens(layout).iter().any(|t| matches!(t, Tok::Frac { .. }))
}

fn frac_nanos(digits: &str) -> i32 {
    let mut padded = digits.chars().take(9).collect::<String>();
    while padded.len() < 9 {
        padded.push('0');
    }
    padded.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use super::*;
    use serde_json::json;

    /// Expectations from Sprig's "Date Functions" page
    /// (masterminds.github.io/sprig/date.html) and Go's time package
    /// documentation, at fixed times; checked against Go.
    #[test]
    fn date_functions_at_fixed_times() {
        let n = json!({"t": "2023-07-04 15:04:05.5 +0000 UTC"});
        table(&[
            (
                r#"{{ dateInZone "2006-01-02 15:04:05" 0 "UTC" }}"#,
                n.clone(),
                Ok("1970-01-01 00:00:00"),
            ),
            (
                r#"{{ dateInZone "Jan 2, 2006 at 3:04pm (MST)" 1700000000 "UTC" }}"#,
                n.clone(),
                Ok("Nov 14, 2023 at 10:13pm (UTC)"),
            ),
            (
                r#"{{ date_in_zone "Monday 02/01/06 15h04" 1700000000 "Europe/Paris" }}"#,
                n.clone(),
                Ok("Tuesday 14/11/23 23h13"),
            ),
            (
                r#"{{ dateInZone "2006-01-02T15:04:05Z07:00" 1700000000 "Asia/Kolkata" }}"#,
                n.clone(),
                Ok("2023-11-15T03:43:20+05:30"),
            ),
            (
                r#"{{ dateInZone "2006-01-02T15:04:05.000Z0700" .t "UTC" }}"#,
                n.clone(),
                Ok("2023-07-04T15:04:05.500Z"),
            ),
            (
                r#"{{ dateInZone "January _2 002 .999" .t "UTC" }}"#,
                n.clone(),
                Ok("July  4 185 .5"),
            ),
            (
                r#"{{ htmlDateInZone 1700000000 "UTC" }}"#,
                n.clone(),
                Ok("2023-11-14"),
            ),
            (
                r#"{{ dateInZone "15:04" 0 "Not/AZone" }}"#,
                n.clone(),
                Ok("00:00"),
            ),
            (
                r#"{{ toDate "2006-01-02" "2017-12-31" | dateInZone "02/01/2006" 0 | len }}"#,
                n.clone(),
                Ok("10"),
            ),
            (
                r#"{{ mustToDate "2006-01-02 MST" "2017-12-31 UTC" | unixEpoch }}"#,
                n.clone(),
                Ok("1514678400"),
            ),
            (
                r#"{{ toDate "2006-01-02" "nope" }}"#,
                n.clone(),
                Ok("0001-01-01 00:00:00 +0000 UTC"),
            ),
            (
                r#"{{ mustToDate "2006-01-02" "nope" }}"#,
                n.clone(),
                Err(r#"parsing time "nope" as "2006-01-02": cannot parse "nope""#),
            ),
            (r#"{{ unixEpoch .t }}"#, n.clone(), Ok("1688483045")),
            (
                r#"{{ dateModify "1.5h" .t }}"#,
                n.clone(),
                Ok("2023-07-04 16:34:05.5 +0000 UTC"),
            ),
            (
                r#"{{ dateModify "-24h" .t | unixEpoch }}"#,
                n.clone(),
                Ok("1688396645"),
            ),
            (
                r#"{{ dateModify "nope" .t }}"#,
                n.clone(),
                Ok("2023-07-04 15:04:05.5 +0000 UTC"),
            ),
            (
                r#"{{ mustDateModify "nope" .t }}"#,
                n.clone(),
                Err(r#"time: invalid duration "nope""#),
            ),
            (r#"{{ duration "95" }}"#, n.clone(), Ok("1m35s")),
            (r#"{{ duration "90061" }}"#, n.clone(), Ok("25h1m1s")),
            // An int literal is not an int64: Sprig's switch gives zero.
            (r#"{{ duration 95 }}"#, n.clone(), Ok("0s")),
            (r#"{{ durationRound "2h10m5s" }}"#, n.clone(), Ok("2h")),
            (r#"{{ durationRound "400h" }}"#, n.clone(), Ok("16d")),
            (r#"{{ durationRound "9000h" }}"#, n.clone(), Ok("1y")),
            (r#"{{ durationRound "61s" }}"#, n.clone(), Ok("1m")),
            (r#"{{ now | unixEpoch | len }}"#, n.clone(), Ok("10")),
            (r#"{{ ago (now) }}"#, n.clone(), Ok("0s")),
        ]);
    }

    #[test]
    fn go_durations() {
        for (nanos, want) in [
            (0i128, "0s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (1_500, "1.5µs"),
            (-2_000_000, "-2ms"),
        ] {
            assert_eq!(go_duration(nanos), want);
        }
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert!(parse_go_duration("5").is_err());
    }
}
