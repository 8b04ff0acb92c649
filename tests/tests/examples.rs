//! The example configs in config/examples/, replayed through the `edgejoin`
//! binary as a user runs it: results must equal the recorded expectation byte
//! for byte, run after run, and the hand-computed windows below must be there.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn edgejoin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
}

/// Replays an example to a file and returns its bytes.
fn replay(name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let ex = root().join("config/examples");
    let st = edgejoin()
        .args(["replay", "--config"])
        .arg(ex.join(format!("{name}.toml")))
        .arg("--input")
        .arg(ex.join(format!("{name}.jsonl")))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

fn rows(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn check(name: &str) -> Vec<Value> {
    let got = replay(name);
    let again = replay(name);
    assert_eq!(got, again, "{name}: replay is not deterministic");
    let want = std::fs::read(root().join(format!("config/examples/{name}.expected.jsonl"))).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "{name}: results differ from config/examples/{name}.expected.jsonl"
    );
    rows(&got)
}

const T0: i64 = 1_699_999_800_000; // 2023-11-14T22:10:00Z
const M: i64 = 60_000;

fn find<'a>(rows: &'a [Value], window: &str, key: &str, start: i64) -> &'a Value {
    rows.iter()
        .find(|r| r["window"] == window && r["key"] == key && r["start"] == start)
        .unwrap_or_else(|| panic!("no {window}/{key} window at {start}"))
}

#[test]
fn sliding_windows() {
    let r = check("sliding");
    // 10-minute windows every 5 minutes: each reading is in two
    let w = find(&r, "vib_10m", "m1", T0);
    assert_eq!((w["end"].as_i64(), w["count"].as_u64()), (Some(T0 + 10 * M), Some(4)));
    assert_eq!(w["values"]["mean_rms"], 3.25); // 1, 3, 5 and the out-of-order 4
    assert_eq!(w["values"]["max_rms"], 5.0);
    let w = find(&r, "vib_10m", "m1", T0 + 5 * M);
    assert_eq!(w["count"], 3); // 6m, 5.5m, 12m; the reading at 4.5m came 8 minutes late: dropped
    assert_eq!(find(&r, "vib_10m", "m2", T0 - 5 * M)["values"]["mean_rms"], 2.0);
    assert_eq!(r.len(), 11);
    // a window is emitted once the watermark (max ts - 1m) reaches its end
    assert_eq!(find(&r, "vib_10m", "m1", T0 - 5 * M)["emitted_ms"], T0 + 6 * M + 200);
}

#[test]
fn misaligned_offsets() {
    let r = check("misaligned");
    // offset 2m: [:08, :13) around T0 = :10, i.e. starts at T0 - 3m, T0 + 2m, …
    let w = find(&r, "cpu_at_02", "web1", T0 - 3 * M);
    assert_eq!((w["count"].as_u64(), w["values"]["cpu"].as_f64()), (Some(2), Some(15.0)));
    let w = find(&r, "cpu_at_02", "web1", T0 + 2 * M);
    assert_eq!(w["count"], 3); // 2.5m, 4m, 6.5m
    assert_eq!(w["values"]["peak"], 60.0);
    // offset -1m is the same grid as 4m: T0 - 1m, T0 + 4m, …
    let w = find(&r, "cpu_at_04", "web1", T0 - M);
    assert_eq!((w["count"].as_u64(), w["values"]["cpu"].as_f64()), (Some(3), Some(20.0)));
    assert_eq!(find(&r, "cpu_at_04", "web1", T0 + 9 * M)["values"]["cpu"], 85.0);
}

#[test]
fn sessions_and_routed_late_events() {
    let r = check("sessions");
    // u1 clicks at 0, 2, 6 min (gaps <= 5m): one session [0, 6m + 5m)
    let s = find(&r, "user_sessions", "u1", T0);
    assert_eq!(s["end"], T0 + 11 * M);
    assert_eq!(s["count"], 3);
    assert_eq!(s["values"]["dwell"], 12.0);
    assert_eq!(
        (s["values"]["first_dwell"].as_f64(), s["values"]["last_dwell"].as_f64()),
        (Some(3.0), Some(5.0))
    );
    // 12 and 13.5 min: a new session (gap 6m > 5m)
    assert_eq!(find(&r, "user_sessions", "u1", T0 + 12 * M)["count"], 2);
    // the click at 9 min arrived ~12 minutes later: routed as late, not merged, nothing retracted
    let late: Vec<&Value> = r.iter().filter(|x| x["late"] == true).collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["ts"], T0 + 9 * M);
    assert_eq!(late[0]["watermark"], T0 + 18 * M); // max ts 20m - lateness 2m
    assert_eq!(late[0]["values"]["dwell"], 7.0);
}

#[test]
fn rollup_1m_into_5m() {
    let r = check("rollup");
    assert!(r.iter().all(|x| x["window"] == "activity_5m"), "the 1-minute window is internal");
    // ann's first 5 minutes: 1-minute windows [0,1) 3 clicks (2 events), [1,2) 1, [2,3) 3, [4,5) 3 (2 events)
    let w = find(&r, "activity_5m", "ann", T0);
    assert_eq!(w["count"], 4);
    assert_eq!(w["values"]["clicks"], 10.0);
    assert_eq!(w["values"]["events"], 6.0);
    assert_eq!(w["values"]["minutes"], 4.0);
    assert_eq!(w["values"]["worst_minute_lat"], 200.0);
    let w = find(&r, "activity_5m", "bob", T0);
    assert_eq!((w["values"]["clicks"].as_f64(), w["values"]["events"].as_f64()), (Some(6.0), Some(2.0)));
}

#[test]
fn check_config_accepts_every_example() {
    for entry in std::fs::read_dir(root().join("config/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // the file alone: examples name /var/lib/edgejoin, which this machine may not let us write
            let out =
                edgejoin().args(["check-config", "--portable", "--config"]).arg(&path).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("memory bound") && text.contains(": OK"), "{text}");
        }
    }
}

#[test]
fn check_config_refuses_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[stream]]\nname = \"s\"\ntopics = [\"a/{d}\"]\ncapacity = 0\n").unwrap();
    let out = edgejoin().args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:"), "{err}");
    assert!(err.contains("capacity = 0: it must be at least 1"), "{err}");
}

/// What `run` would refuse at once, `check-config` refuses first, at the line that says it (#19).
#[test]
fn check_config_runs_every_check_run_makes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let base = format!(
        "[gateway]\nstate_dir = \"{}\"\n\n[[stream]]\nname = \"temperature\"\ntopics = [\"t/{{d}}\"]\nkey = \"{{d}}\"\nvalues = [\"v\"]\n",
        state.display()
    );
    let check = |text: &str, portable: bool| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = edgejoin();
        cmd.arg("check-config");
        if portable {
            cmd.arg("--portable");
        }
        let out = cmd.arg("--config").arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let refused = |extra: &str, line: usize, says: &str| {
        let text = format!("{base}{extra}");
        let (ok, err) = check(&text, false);
        assert!(!ok, "accepted:\n{text}");
        assert!(err.contains(&format!("c.toml:{line}:")), "wrong line in {err:?} for\n{text}");
        assert!(err.contains(says), "{err:?} does not say {says:?}");
    };
    refused("\n[source]\nurl = \"mqtts://localhost:8883\"\n", 11, "mqtts:// needs `ca_file`");
    refused(
        "\n[source]\nurl = \"mqtt://localhost:1883\"\nca_file = \"/etc/ssl/ca.pem\"\n",
        11,
        "need an `mqtts://` url",
    );
    refused("\n[upstream]\nurl = \"mqtts://localhost:8883\"\n", 11, "mqtts:// needs `ca_file`");
    refused(
        "\n[upstream]\nurl = \"mqtts://localhost:8883\"\nca_file = \"/nonexistent/ca.pem\"\n",
        12,
        "/nonexistent/ca.pem: No such file",
    );
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    refused(
        &format!("\n[upstream]\nurl = \"mqtts://localhost:8883\"\nca_file = \"{}\"\n", not_pem.display()),
        12,
        "no certificate in it",
    );
    refused(
        "\n[upstream]\nurl = \"mqtt://localhost:1883\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
        13,
        "password_file /nonexistent/pw",
    );
    refused("\n[[window]]\nname = \"w\"\ninput = \"temperature\"\nsize = \"5M\"\n", 13, "lower-case `m`");
    refused(
        "\n[[window]]\nname = \"w\"\ninput = \"temperature\"\nsize = \"1y\"\n",
        13,
        "write days (`365d`)",
    );
    refused(
        "\n[[window]]\nname = \"w\"\ninput = \"temprature\"\nsize = \"5m\"\n",
        12,
        "did you mean `temperature`?",
    );
    refused(
        "\n[[window]]\nname = \"w\"\ninput = \"temperature\"\nsise = \"5m\"\n",
        13,
        "did you mean `size`?",
    );
    // a syntax error is reported on its own line (6: the unclosed array), not on the next
    let (ok, err) = check(&base.replace("[\"t/{d}\"]", "[\"t/{d}\""), false);
    assert!(!ok && err.contains("c.toml:6:"), "{err}");
    // state_dir: where the service could not create it, with its path
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let blocked = base.replace(&state.display().to_string(), &file.join("state").display().to_string());
    let (ok, err) = check(&blocked, false);
    assert!(!ok && err.contains("c.toml:2:") && err.contains("plain-file is not a directory"), "{err}");
    // --portable checks the file alone
    assert!(check(&blocked, true).0);
    assert!(check(&base, false).0, "a good config passes");
    assert!(!state.exists(), "check-config does not create state_dir");
    // and `run` refuses the same way, at once, before any network
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &blocked).unwrap();
    let out = edgejoin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain-file is not a directory"));
}

#[test]
fn replay_counts_bad_lines_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"recv_ms\":1000,\"topic\":\"plant/m1/vibration\",\"payload\":\"{\\\"ts\\\":1000,\\\"rms\\\":1}\"}\n",
            "this is not json\n",
            "{\"recv_ms\":1001,\"topic\":\"plant/m1/vibration\",\"payload\":\"{\\\"ts\\\":\\\"soon\\\"}\"}\n",
            "{\"recv_ms\":1002,\"topic\":\"plant/m1/vibration\",\"payload_b64\":\"eyJ0cyI6MTAwMiwicm1zIjoyfQ==\"}\n",
            "{\"recv_ms\":1003,\"topic\":\"elsewhere\",\"payload\":\"1\"}\n",
        ),
    )
    .unwrap();
    let out = edgejoin()
        .args(["replay", "--stats", "--config"])
        .arg(root().join("config/examples/sliding.toml"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in.jsonl:2: skipped"), "{err}");
    let stats: Value = serde_json::from_str(&err[err.find('{').unwrap()..]).unwrap();
    let s = &stats["streams"]["vibration"];
    assert_eq!(s["decoded"], 2);
    assert_eq!(s["decode_errors"]["bad_time"], 1);
    assert_eq!(stats["unrouted"], 1);
    assert_eq!(stats["replay"]["bad_lines"], 1);
    let r = rows(&out.stdout);
    assert_eq!(r.len(), 2); // the two readings in the hopping windows [-5m+…) and [0, 10m)
    assert!(r.iter().all(|x| x["count"] == 2));
}

fn join_rows<'a>(rows: &'a [Value], key: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["key"] == key).collect()
}

#[test]
fn tolerance_join_orders_and_payments() {
    let r = check("tolerance");
    let s = 1000;
    let right_ts = |key: &str| -> Vec<Option<i64>> {
        join_rows(&r, key).iter().map(|x| x["right"]["ts"].as_i64().map(|t| (t - T0) / s)).collect()
    };
    assert_eq!(right_ts("o-1"), [Some(30)]); // paid 30 s after the order
    assert_eq!(right_ts("o-2"), [None]); // paid 140 s after: outside 0..2m
    assert_eq!(right_ts("o-3"), [Some(95), Some(100)]); // two partial payments, both within 2 minutes
    assert_eq!(right_ts("o-4"), [None]); // never paid
    assert_eq!(right_ts("o-5"), [None]); // "paid" before the order: lower bound is 0 s
    assert_eq!(right_ts("o-7"), [None]); // its payment arrived after the payments watermark: late
    assert_eq!(right_ts("o-8"), [Some(400)]);
    // an unmatched order comes out once no on-time payment can match it: payments'
    // watermark (max ts - 30 s) must pass order ts + 2 min; o-2 (10 s) waits for the payment at 260 s
    let o2 = join_rows(&r, "o-2")[0];
    assert_eq!(o2["emitted_ms"], T0 + 260 * s + 400);
    assert_eq!(o2["left"]["values"]["amount"], 40.0);
}

#[test]
fn asof_join_latest_temperature() {
    let r = check("asof");
    let m1 = |t: i64| -> &Value {
        r.iter()
            .find(|x| x["key"] == "m1" && x["left"]["ts"] == T0 + t * 1000)
            .expect("a row per vibration reading")
    };
    assert!(m1(20)["right"].is_null()); // the first temperature is at 30 s
    assert_eq!(m1(30)["right"]["ts"], T0 + 30_000); // equal timestamps match
    assert_eq!(m1(140)["right"]["values"]["celsius"], 21.0);
    assert_eq!(m1(150)["right"]["values"]["celsius"], 21.5);
    assert_eq!(m1(350)["right"]["values"]["celsius"], 22.5);
    // every reading is answered once; m2 has no thermometer
    assert_eq!(r.iter().filter(|x| x["key"] == "m1").count(), 36);
    assert!(join_rows(&r, "m2").iter().all(|x| x["right"].is_null()));
}

#[test]
fn bucket_join_per_five_minutes() {
    let r = check("bucket");
    assert_eq!(r.len(), 3);
    let b = &r[0];
    assert_eq!((b["left"]["start"].as_i64(), b["right"]["start"].as_i64()), (Some(T0), Some(T0)));
    assert_eq!(b["left"]["values"]["avg"], 20.8); // 20, 21, 22, 20, 21
    assert_eq!(b["right"]["values"]["avg"], 6.0); // 5, 6, 7
    assert_eq!(r[1]["right"]["values"]["avg"], 8.5);
}

#[test]
fn overlap_join_minutes_in_misaligned_five_minutes() {
    let r = check("overlap");
    // minutes 0 and 1 start before the first metrics window [2m, 7m): no metrics
    assert!(r[0]["right"].is_null() && r[0]["left"]["start"] == T0);
    assert!(r[1]["right"].is_null() && r[1]["left"]["start"] == T0 + M);
    // minutes 2..6 start inside [2m, 7m); 7..11 inside [7m, 12m)
    for x in &r[2..7] {
        assert_eq!(x["right"]["start"], T0 + 2 * M);
        assert_eq!(x["right"]["values"]["cpu"], 60.0);
    }
    for x in &r[7..12] {
        assert_eq!(x["right"]["start"], T0 + 7 * M);
    }
    assert_eq!(r.len(), 12);
}

#[test]
fn session_join_play_and_server() {
    let r = check("session_join");
    let ann = join_rows(&r, "ann");
    // play [0, 5m) and server [320 s, 410 s) intersect once widened by 30 s
    assert_eq!(ann[0]["left"]["values"]["score"], 10.0);
    assert_eq!(ann[0]["right"]["values"]["worst_lag"], 120.0);
    assert!(ann[1]["right"].is_null()); // play [10m, 13m): no server session near it
    assert!(join_rows(&r, "bob")[0]["right"].is_null());
}

#[test]
fn skewed_clocks_are_corrected_per_device() {
    let r = check("skewed");
    // every reading lands in its true minute: 20 minutes × 12 readings per device
    assert_eq!(r.len(), 40);
    assert!(r.iter().all(|w| w["count"] == 12), "{r:?}");
    for key in ["fridge", "door"] {
        let starts: Vec<i64> =
            r.iter().filter(|w| w["key"] == key).map(|w| w["start"].as_i64().unwrap()).collect();
        assert_eq!(starts, (0..20).map(|m| T0 + m * M).collect::<Vec<_>>(), "{key}");
    }
    // the corrections, per device, in replay --stats
    let ex = root().join("config/examples");
    let out = edgejoin()
        .args(["replay", "--stats", "--config"])
        .arg(ex.join("skewed.toml"))
        .arg("--input")
        .arg(ex.join("skewed.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stats: Value = serde_json::from_str(&err[err.find('{').unwrap()..]).unwrap();
    let fridge = &stats["devices"]["fridge"];
    // a day behind (+ ~17 ms path delay, − 240 ms it gained over 20 minutes at 200 ppm)
    assert!((fridge["offset_ms"].as_f64().unwrap() - 86_399_777.0).abs() < 20.0, "{fridge}");
    assert!((fridge["drift_ppm"].as_f64().unwrap() + 200.0).abs() < 5.0, "{fridge}");
    assert_eq!(fridge["steps"], 0);
    let door = &stats["devices"]["door"];
    assert_eq!(door["steps"], 1, "the door sensor rebooted once: {door}");
    assert!((door["drift_ppm"].as_f64().unwrap() - 300.0).abs() < 5.0, "{door}");
    assert_eq!(stats["streams"]["temperature"]["late_dropped"], 0);

    // the same recording on the devices' own clocks: the fridge's windows are a day off
    let dir = tempfile::tempdir().unwrap();
    let device_cfg = dir.path().join("device.toml");
    let text = std::fs::read_to_string(ex.join("skewed.toml"))
        .unwrap()
        .replace("clock = \"corrected\"", "clock = \"device\"");
    std::fs::write(&device_cfg, text).unwrap();
    let out = edgejoin()
        .args(["replay", "--config"])
        .arg(&device_cfg)
        .arg("--input")
        .arg(ex.join("skewed.jsonl"))
        .output()
        .unwrap();
    let dev_rows = rows(&out.stdout);
    let fridge_start = dev_rows.iter().find(|w| w["key"] == "fridge").unwrap()["start"].as_i64().unwrap();
    assert!(fridge_start < T0 - 23 * 60 * M, "device clock puts the fridge a day early: {fridge_start}");
}

/// The packaged unit checks the config before a start and before a reload,
/// the same file `run` reads, and reloads with SIGHUP (which `run` answers).
#[test]
fn the_unit_checks_the_config_before_start_and_reload() {
    let unit = std::fs::read_to_string(root().join("systemd/edgejoin.service")).unwrap();
    let lines = |key: &str| -> Vec<String> {
        unit.lines().filter_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).collect()
    };
    let start = lines("ExecStart=");
    assert_eq!(start.len(), 1);
    let config = start[0].split("--config ").nth(1).unwrap().to_string();
    let check = format!("/usr/bin/edgejoin check-config --config {config}");
    assert_eq!(lines("ExecStartPre="), vec![check.clone()]);
    assert_eq!(lines("ExecReload="), vec![check, "/bin/kill -HUP $MAINPID".to_string()]);
    assert_eq!(lines("Type="), vec!["notify"]);
}

/// The README and docs/ pages, and each relative link in them: (page, link target as written).
fn doc_links() -> Vec<(PathBuf, String)> {
    let root = root().canonicalize().unwrap();
    let mut pages = vec![root.join("README.md")];
    pages.extend(
        std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut links = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        assert!(!text.contains("shared/"), "{} points outside the repository", page.display());
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            if !(target.starts_with("http") || target.starts_with('#') || target.starts_with("mailto:")) {
                links.push((page.clone(), target.split('#').next().unwrap().to_string()));
            }
        }
    }
    links
}

/// Every relative link in the README and docs/ points at a file in the
/// repository, and no page sends the reader to a document outside it.
#[test]
fn doc_links_resolve_inside_the_repository() {
    let root = root().canonicalize().unwrap();
    let links = doc_links();
    for (page, target) in &links {
        let path = page.parent().unwrap().join(target);
        let resolved =
            path.canonicalize().unwrap_or_else(|_| panic!("{}: broken link {target}", page.display()));
        assert!(resolved.starts_with(&root), "{}: {target} is outside the repository", page.display());
    }
    assert!(links.len() > 50, "{} links", links.len());
}

/// Where the .deb installs a file of the repository (`[package.metadata.deb]
/// assets` of gateway/Cargo.toml), if it does.
fn installed(assets: &[(String, String)], file: &Path) -> Option<PathBuf> {
    let rel = file.strip_prefix(root().canonicalize().unwrap()).ok()?;
    assets.iter().find_map(|(src, dest)| {
        let src = src.strip_prefix("../")?;
        let (dir, pattern) = src.rsplit_once('/').unwrap_or(("", src));
        let name = rel.file_name()?.to_str()?;
        let in_dir = rel.parent()? == Path::new(dir);
        let matches = match pattern.split_once('*') {
            Some((pre, post)) => name.starts_with(pre) && name.ends_with(post),
            None => name == pattern,
        };
        (in_dir && matches).then(|| {
            if dest.ends_with('/') {
                Path::new("/").join(dest).join(name)
            } else {
                Path::new("/").join(dest)
            }
        })
    })
}

/// The .deb installs the README and docs in the tree's layout, so their
/// links work on the device; it ships every example with its recording,
/// and the man pages.
#[test]
fn the_package_keeps_doc_links_and_ships_recordings_and_man_pages() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("gateway/Cargo.toml")).unwrap()).unwrap();
    let assets: Vec<(String, String)> = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_str().unwrap().to_string()))
        .collect();
    let root = root().canonicalize().unwrap();
    for (page, target) in doc_links() {
        let page_at =
            installed(&assets, &page).unwrap_or_else(|| panic!("{} is not packaged", page.display()));
        let target_file = page.parent().unwrap().join(&target).canonicalize().unwrap();
        if target_file.is_dir() {
            continue;
        }
        let want = installed(&assets, &target_file)
            .unwrap_or_else(|| panic!("{}: {target} is not packaged", page.display()));
        let mut got = PathBuf::new();
        for c in page_at.parent().unwrap().join(&target).components() {
            match c {
                std::path::Component::ParentDir => {
                    got.pop();
                }
                std::path::Component::CurDir => {}
                c => got.push(c),
            }
        }
        assert_eq!(got, want, "{}: {target}", page.display());
    }
    for e in std::fs::read_dir(root.join("config/examples")).unwrap() {
        let p = e.unwrap().path();
        assert!(installed(&assets, &p).is_some(), "{} is not packaged", p.display());
    }
    let man = root.join("docs/man/edgejoin.1");
    assert_eq!(installed(&assets, &man), Some(PathBuf::from("/usr/share/man/man1/edgejoin.1")));
}

/// The unit's exposure as `systemd-analyze security` rates it offline is the
/// one docs/SERVICE.md states, and stays "OK" (≤ 2.0; issue #17's security
/// review). SKIPPED where systemd-analyze is missing.
#[test]
fn the_units_exposure_is_low_and_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(root.join("systemd/edgejoin.service"))
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            eprintln!("SKIPPED: systemd-analyze is not installed");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for edgejoin.service: ").nth(1))
        .unwrap_or_else(|| panic!("no overall exposure in: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 2.0, "exposure {level}");
    let doc = std::fs::read_to_string(root.join("docs/SERVICE.md")).unwrap();
    assert!(doc.contains(&format!("rates it **{score:.1} OK**")), "docs/SERVICE.md should state {score:.1}");
}
