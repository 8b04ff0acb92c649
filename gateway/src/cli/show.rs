//! Results as a person reads them, one line each (`edgejoin tail`, the
//! demo): joins `⋈`, windows `▣`, late events `⏱`, times in UTC marked `Z`.

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A timestamp (ms since the epoch) in UTC, labelled `Z`: the time of day,
/// preceded by the date when it is not `now`'s day.
pub fn clock(ms: i64, now_ms: i64) -> String {
    let (day, s) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let time = format!("{:02}:{:02}:{:02}.{:03}Z", s / 3_600_000, s / 60_000 % 60, s / 1000 % 60, s % 1000);
    if day == now_ms.div_euclid(86_400_000) {
        time
    } else {
        let (y, m, d) = civil(day);
        format!("{y:04}-{m:02}-{d:02} {time}")
    }
}

fn values(v: &serde_json::Value) -> String {
    match v.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, x)| match x.as_f64() {
                Some(f) => format!("{k}={}", (f * 100.0).round() / 100.0),
                None => format!("{k}=–"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

fn side(s: &serde_json::Value, now: i64) -> String {
    if let Some(stream) = s["stream"].as_str() {
        format!("{stream} @{} {}", clock(s["ts"].as_i64().unwrap_or(0), now), values(&s["values"]))
    } else {
        format!("{} {}", s["window"].as_str().unwrap_or("?"), span(s, now))
    }
}

/// A window row's extent, count and values: `[start–end) n=3 mean=21.26`.
fn span(w: &serde_json::Value, now: i64) -> String {
    format!(
        "[{}–{}) n={} {}",
        clock(w["start"].as_i64().unwrap_or(0), now),
        clock(w["end"].as_i64().unwrap_or(0), now),
        w["count"],
        values(&w["values"])
    )
}

/// One line per result.
pub fn describe(v: &serde_json::Value, now: i64) -> String {
    if let Some(join) = v["join"].as_str() {
        let right = if v["right"].is_null() {
            "(no match)".to_string()
        } else {
            let dt = v["right"]["ts"]
                .as_i64()
                .zip(v["left"]["ts"].as_i64())
                .map(|(r, l)| format!(" ({:+.1} s)", (r - l) as f64 / 1000.0));
            format!("{}{}", side(&v["right"], now), dt.unwrap_or_default())
        };
        format!("⋈ {join:<24} {:<10} {}  ⇢  {right}", v["key"].as_str().unwrap_or(""), side(&v["left"], now))
    } else if let Some(w) = v["window"].as_str() {
        format!("▣ {w:<24} {:<10} {}", v["key"].as_str().unwrap_or(""), span(v, now))
    } else if v["late"] == true {
        format!(
            "⏱ late {} {} @{} (watermark {})",
            v["stream"].as_str().unwrap_or(""),
            v["key"],
            clock(v["ts"].as_i64().unwrap_or(0), now),
            clock(v["watermark"].as_i64().unwrap_or(0), now)
        )
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_labelled_with_the_date_when_not_today() {
        let now = 1_795_953_785_250; // 2026-11-29T12:03:05.250Z
        assert_eq!(clock(now, now), "12:03:05.250Z");
        assert_eq!(clock(now - 12 * 3_600_000 - 3 * 60_000 - 5_251, now), "2026-11-28 23:59:59.999Z");
        assert_eq!(clock(-1000, now), "1969-12-31 23:59:59.000Z");
        assert_eq!(clock(4_075_923_723_000, now), "2099-02-28 01:02:03.000Z");
        // absurd timestamps still print
        assert!(clock(i64::MIN, now).ends_with('Z') && clock(i64::MAX, now).ends_with('Z'));
    }

    #[test]
    fn a_window_and_a_join_read_as_one_line_each() {
        let now = 1_795_953_785_250;
        let w = serde_json::json!({"window":"t_5m","key":"a","start":now - 300_000,"end":now,"count":3,"values":{"avg":21.256}});
        assert_eq!(
            describe(&w, now),
            "▣ t_5m                     a          [11:58:05.250Z–12:03:05.250Z) n=3 avg=21.26"
        );
        let j = serde_json::json!({"join":"pay","key":"o1","left":{"stream":"orders","ts":now,"values":{}},"right":null});
        assert!(describe(&j, now).ends_with("⇢  (no match)"), "{}", describe(&j, now));
    }
}
