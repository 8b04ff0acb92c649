//! Units of the config file: durations (`"500ms"`, `"2m"`, `"1h30m"`, `"-30s"`)
//! in integer milliseconds, and byte sizes (`"64MiB"`, `"10KB"`, `"4096"`).

/// The longest duration the config accepts (100 years), so that every
/// timestamp ± duration sum stays far inside `i64` milliseconds.
pub const MAX_DURATION_MS: i64 = 100 * 366 * 24 * 3_600_000;

/// Parses a duration into whole milliseconds. A leading `-` makes it negative
/// (join bounds and window offsets may be negative).
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if body.is_empty() {
        return Err(format!("`{text}` is not a duration (try \"500ms\", \"2m\", \"1h30m\")"));
    }
    if let Some(unit) = calendar_unit(body).filter(|u| matches!(*u, "M" | "month" | "months")) {
        return Err(format!(
            "`{text}`: `{unit}` means months (which have no fixed length); use ms, s, m (minutes), h, d, w or y{}",
            if unit == "M" { " — for minutes write a lower-case `m`" } else { "" }
        ));
    }
    let d = humantime::parse_duration(body)
        .map_err(|e| format!("`{text}` is not a duration ({e}; try \"500ms\", \"2m\", \"1h30m\")"))?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "`{text}` is finer than a millisecond; edgejoin counts time in whole milliseconds"
        ));
    }
    let ms = d.as_millis();
    if ms > MAX_DURATION_MS as u128 {
        return Err(format!("`{text}` is longer than 100 years"));
    }
    let ms = ms as i64;
    Ok(if neg { -ms } else { ms })
}

/// The first month or year unit in a duration's text (humantime reads `M`
/// as months: `"5M"` would be five months where minutes were meant).
/// Months are refused in every duration; years only where a fixed length
/// matters ([`fixed_length`]).
pub fn calendar_unit(body: &str) -> Option<&str> {
    let mut rest = body;
    while !rest.is_empty() {
        let unit_start = rest.find(|c: char| c.is_ascii_alphabetic())?;
        let after = &rest[unit_start..];
        let len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let unit = &after[..len];
        if matches!(unit, "M" | "month" | "months" | "y" | "year" | "years") {
            return Some(unit);
        }
        rest = &after[len..];
    }
    None
}

/// A window's size, slide, offset or gap: a fixed length, so no calendar
/// unit (a year is 365.25 days to the parser, not a calendar year).
pub fn fixed_length(text: &str) -> Result<(), String> {
    // months: refused with their own hint by `parse_duration_ms`
    match calendar_unit(text).filter(|u| matches!(*u, "y" | "year" | "years")) {
        Some(unit) => Err(format!(
            "`{text}`: a window is a fixed length and `{unit}` is a calendar unit; write days (`365d`) or weeks"
        )),
        None => Ok(()),
    }
}

/// Formats milliseconds back into the shortest duration text (`90000` → `1m30s`).
pub fn format_duration_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
    }
    let mut rest = ms.unsigned_abs();
    for (unit, len) in [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if rest >= len {
            out.push_str(&format!("{}{unit}", rest / len));
            rest %= len;
        }
    }
    out
}

/// Parses a byte size: a whole number with an optional unit
/// (`B`, `KB`/`MB`/`GB` = powers of 1000, `KiB`/`MiB`/`GiB` or `K`/`M`/`G` = powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("`{text}` is not a size (try \"64MiB\", \"512KiB\", \"1GB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!("`{text}`: unknown size unit `{other}` (use B, KB, MB, GB, KiB, MiB or GiB)"))
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats a byte count for humans (`1536` → `1.5 KiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `a` divided by `b` rounded towards negative infinity (`b > 0`).
#[inline]
pub fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_years_are_refused_with_a_hint() {
        let e = parse_duration_ms("5M").unwrap_err();
        assert!(e.contains("means months") && e.contains("lower-case `m`"), "{e}");
        assert!(parse_duration_ms("1h2months").unwrap_err().contains("`months`"));
        assert_eq!(parse_duration_ms("1y"), Ok(31_557_600_000), "years stay (e.g. max_future = \"100y\")");
        assert!(fixed_length("1y").unwrap_err().contains("365d"));
        assert!(fixed_length("5m").is_ok());
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration_ms("90 min"), Ok(5_400_000));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("-30s"), Ok(-30_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert!(parse_duration_ms("5 parsecs").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("1500us").is_err());
        assert!(parse_duration_ms("1000y").is_err());
        assert_eq!(format_duration_ms(90_000), "1m30s");
        assert_eq!(format_duration_ms(-1500), "-1s500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }
}
