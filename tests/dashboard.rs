//! The dashboard as a person sees it: real Chromium (headless, driven through chromedriver) loads
//! the webui while the pipeline runs, and must show a non-zero hashing speed. The screenshot is
//! left at `target/dashboard.png` for people to look at.

mod support;

use std::path::Path;
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use support::{Process, Redis, Service, backends, free_port, tool, worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_non_zero_speed_in_chromium() {
    let redis = Redis::start();
    let quick = [
        ("RNG_DELAY", "5ms".to_string()),
        ("HASHER_DELAY", "5ms".to_string()),
        ("WORKER_DELAY", "5ms".to_string()),
    ];
    let (rng, hasher) = backends(&quick);
    let _worker = worker(&rng, &hasher, &redis, &quick);
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);

    let port = free_port();
    let driver = Process::spawn(
        "chromedriver",
        &tool("chromedriver"),
        &[&format!("--port={port}")],
        &[],
    );
    driver.wait_for_log("started successfully", Duration::from_secs(20));

    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        serde_json::json!({
            "binary": tool("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");

    browser
        .goto(&webui.url())
        .await
        .expect("load the dashboard");
    let mut speed = 0.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let text = browser
            .find(Locator::Id("speed"))
            .await
            .expect("the page has #speed")
            .text()
            .await
            .expect("#speed has text");
        speed = text.trim().parse::<f64>().unwrap_or(0.0);
        if speed > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hashes = browser
        .find(Locator::Id("hashes"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Let the chart draw a few points before the picture is taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let png = browser.screenshot().await.expect("a screenshot");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    browser.close().await.expect("close the session");

    assert!(speed > 0.0, "the dashboard shows a speed of {speed}");
    assert!(
        hashes
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .unwrap_or(0)
            > 0,
        "the dashboard shows {hashes:?} hashes"
    );
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
