//! What `contrib/` ships for operators (issue #18): the Prometheus alert
//! rules load and behave as their unit tests say (`promtool check rules`,
//! `promtool test rules`), the Grafana dashboard is a well-formed dashboard
//! whose every query parses as PromQL (promtool) and names only metrics the
//! gateway serves (the table in docs/SERVICE.md, which a unit test keeps
//! equal to the registry).
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it);
//! without it the promtool parts say SKIPPED (CI sets EDGEJOIN_REQUIRE_PROMTOOL,
//! and there they fail instead).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("promtool")).find(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var_os("EDGEJOIN_REQUIRE_PROMTOOL").is_none(),
            "promtool is not on PATH and EDGEJOIN_REQUIRE_PROMTOOL is set"
        );
        eprintln!("SKIPPED: promtool not on PATH (apt-get install prometheus)");
    }
    found
}

fn run(tool: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tool).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// Every metric name the gateway serves, from the table in docs/SERVICE.md.
fn served() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/SERVICE.md")).unwrap();
    let names: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("edgejoin_") || n.starts_with("process_"))
        .map(String::from)
        .collect();
    assert!(names.len() > 60, "{names:?}");
    names
}

/// The metric names an expression uses.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['e', 'p']) {
        let word: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let before = rest[..at].chars().last();
        if (word.starts_with("edgejoin_") || word.starts_with("process_"))
            && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push(word.clone());
        }
        rest = &rest[at + word.len().max(1)..];
    }
    out
}

fn known(name: &str, served: &BTreeSet<String>) -> bool {
    served.contains(name) || name.strip_suffix("_bucket").is_some_and(|b| served.contains(b))
}

#[test]
fn the_alert_rules_load_pass_their_unit_tests_and_name_served_metrics() {
    let dir = root().join("contrib/prometheus");
    let rules = std::fs::read_to_string(dir.join("edgejoin-alerts.yml")).unwrap();
    let served = served();
    let mut alerts = Vec::new();
    for line in rules.lines() {
        if let Some(a) = line.trim().strip_prefix("- alert: ") {
            alerts.push(a.to_string());
        }
        if let Some(e) = line.trim().strip_prefix("expr: ") {
            for m in metrics_in(e) {
                assert!(known(&m, &served), "{m} (in {e}) is not a metric the gateway serves");
            }
        }
    }
    // the alerts the issue asks for: source stalled, spool filling, late drops rising, clock steps
    for a in ["EdgejoinSourceStalled", "EdgejoinSpoolFilling", "EdgejoinLateDropsRising", "EdgejoinClockStep"]
    {
        assert!(alerts.iter().any(|x| x == a), "{a} missing from {alerts:?}");
    }
    let Some(tool) = promtool() else { return };
    let checked = run(&tool, &["check", "rules", "edgejoin-alerts.yml"], &dir);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{checked}");
    let tested = run(&tool, &["test", "rules", "edgejoin-alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_grafana_dashboard_is_well_formed_and_queries_served_metrics() {
    let path = root().join("contrib/grafana/edgejoin-dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(d["uid"], "edgejoin-gateways");
    assert!(d["title"].is_string() && d["schemaVersion"].as_u64().unwrap() >= 36, "{}", d["schemaVersion"]);
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["datasource", "instance"]);
    let served = served();
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice: {p}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{p}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "panels overlap at {cx},{cy}: {}", p["title"]);
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            assert!(e.contains("instance=~\"$instance\""), "{}: {e} ignores the gateway picker", p["title"]);
            let used = metrics_in(e);
            assert!(!used.is_empty(), "{e}");
            for m in used {
                assert!(known(&m, &served), "{m} (panel {}) is not a metric the gateway serves", p["title"]);
            }
            exprs.push(e.to_string());
        }
    }
    // the per-device clock-offset panel
    let clock =
        panels.iter().find(|p| p["title"] == "Clock offset by device").expect("the clock-offset panel");
    assert!(clock["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .starts_with("edgejoin_device_clock_offset_seconds{"));

    // every query parses as PromQL: promtool checks them as recording rules
    let Some(tool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m").replace("$instance", ".*");
        rules += &format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let out = run(&tool, &["check", "rules", "dashboard.yml"], dir.path());
    assert!(out.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{out}");
}
