//! The status page (`GET /`, issue #18) in a real browser: Debian's
//! headless Chromium loads it from a live gateway with traffic, runs its
//! script, and the test reads the DOM it rendered; a screenshot is kept as
//! a test artifact (`target/tmp/status-page.png`).
//!
//! Needs `mosquitto` and `chromium-headless-shell` (or `chromium`) on PATH;
//! `.ci/run` installs both. Without a browser the test says SKIPPED (CI sets
//! EDGEJOIN_REQUIRE_BROWSER, and there it fails instead).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn browser() -> Option<PathBuf> {
    ["chromium-headless-shell", "chromium", "chromium-browser"].iter().find_map(|b| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(b)).find(|p| p.is_file())
    })
}

/// Chromium, headless, on `url` with `args`; its stdout.
fn chromium(exe: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(exe)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_status_page_renders_the_live_gateway_in_a_browser() {
    need_mosquitto!();
    let Some(exe) = browser() else {
        assert!(
            std::env::var_os("EDGEJOIN_REQUIRE_BROWSER").is_none(),
            "no headless Chromium on PATH and EDGEJOIN_REQUIRE_BROWSER is set"
        );
        eprintln!("SKIPPED: no chromium-headless-shell or chromium on PATH (apt-get install chromium-headless-shell)");
        return;
    };
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("skewed");
    let (cfg, mport) = with_metrics_addr(&cfg);
    let (path, _) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let gw = Gateway::start(&path);
    publish(broker.port, &to_publish(&msgs));
    let status = || status_json(mport);
    assert!(
        wait_until(20, || {
            let s = status();
            s["service"]["processed"] == msgs.len() as u64 && s["devices"]["fridge"].is_object()
        }),
        "{}",
        status()
    );
    let url = format!("http://127.0.0.1:{mport}/");

    // the DOM after the page's script ran on /status
    let dom = chromium(&exe, &url, &["--virtual-time-budget=5000", "--dump-dom"]);
    assert!(dom.contains("id=\"healthy\">healthy<"), "health: {dom}");
    assert!(dom.contains("example-skewed"), "the gateway's id: {dom}");
    // the pipeline: the stream, its window, the window's output topic
    for (col, name) in [
        ("col-streams", "temperature"),
        ("col-windows", "temp_1m"),
        ("col-outputs", "windows/{window}/{key}"),
    ] {
        let at = dom.find(&format!("id=\"{col}\"")).unwrap_or_else(|| panic!("{col}: {dom}"));
        assert!(dom[at..].contains(&format!("data-name=\"{name}\"")), "{name} under {col}: {dom}");
    }
    // the stream's row, with a watermark lag in it
    let row = dom
        .split("<tr data-stream=\"temperature\">")
        .nth(1)
        .expect("the stream's row")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(row.contains("class=\"n lag\">") && !row.contains("class=\"n lag\">–<"), "lag: {row}");
    assert!(row.contains(&format!(">{}<", msgs.len())), "received: {row}");
    // memory against the bound, the spool, each device's clock and its plot
    assert!(dom.contains("<tr id=\"memory\"><td>memory (resident)</td><td class=\"n\">"), "{dom}");
    assert!(dom.contains("MiB"), "{dom}");
    assert!(dom.contains("id=\"spool-depth\">0<"), "{dom}");
    for d in ["door", "fridge"] {
        assert!(dom.contains(&format!("<tr data-device=\"{d}\">")), "{d}: {dom}");
        assert!(
            dom.contains(&format!("<img alt=\"clock of {d}\" src=\"clocks/{d}.svg\">")),
            "{d}'s plot: {dom}"
        );
    }

    // a screenshot, kept where the test run's artifacts are
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &exe,
        &url,
        &[
            "--virtual-time-budget=5000",
            "--hide-scrollbars",
            "--window-size=1280,1700",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    eprintln!("status page screenshot: {}", shot.display());
    gw.stop();
}
