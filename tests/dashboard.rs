//! The dashboard as a person sees it: real Chromium (headless, driven through chromedriver) loads
//! the webui while the pipeline runs, and must show a non-zero hashing speed and a bar for each
//! replica that serves. The screenshot is left at `target/dashboard.png` for people to look at.
//! When Redis answers but would refuse the workers' writes, the page says why in one line.

mod support;

use std::path::Path;
use std::time::Duration;

use fantoccini::Locator;
use support::{Browser, Redis, Service, backends, worker};

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

    let browser = Browser::start().await;
    browser
        .client
        .goto(&webui.url())
        .await
        .expect("load the dashboard");
    let speed = browser
        .wait_for("#speed", Duration::from_secs(30), |texts| {
            let speed = texts.first()?.trim().parse::<f64>().ok()?;
            (speed > 0.0).then_some(speed)
        })
        .await
        .unwrap_or_else(|shown| panic!("the dashboard shows a speed of {shown:?}"));
    // One rng and one hasher replica, each with its bar: its name and a non-zero rate.
    for service in ["rng", "hasher"] {
        let selector = format!("#replicas-{service} .bar");
        let bars = browser
            .wait_for(&selector, Duration::from_secs(15), |bars| {
                let serving = bars.iter().all(|bar| support::bar_rate(bar) > 0.0);
                (bars.len() == 1 && serving).then(|| bars.to_vec())
            })
            .await
            .unwrap_or_else(|shown| panic!("{service} replicas shown: {shown:?}"));
        eprintln!("{service} replicas on the dashboard: {bars:?}");
    }
    let hashes = browser
        .client
        .find(Locator::Id("hashes"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Let the chart draw a few points before the picture is taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let png = browser.client.screenshot().await.expect("a screenshot");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    browser.client.close().await.expect("close the session");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_says_when_redis_would_refuse_the_workers_writes() {
    let redis = Redis::start();
    let _: () = redis::cmd("SET")
        .arg("wallet")
        .arg("not a hash")
        .query(&mut redis.connection())
        .unwrap();
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);

    let browser = Browser::start().await;
    browser
        .client
        .goto(&webui.url())
        .await
        .expect("load the dashboard");
    let shown = browser
        .wait_for("#write-problem", Duration::from_secs(10), |texts| {
            let text = texts.first()?;
            text.contains("key wallet holds a string, not a hash")
                .then(|| text.clone())
        })
        .await
        .unwrap_or_else(|shown| panic!("the write problem shown: {shown:?}"));
    assert!(!shown.contains('\n'), "one line: {shown:?}");

    // Fixed, the line goes (a hidden element has no text for WebDriver).
    let _: () = redis::cmd("DEL")
        .arg("wallet")
        .query(&mut redis.connection())
        .unwrap();
    browser
        .wait_for("#write-problem", Duration::from_secs(10), |texts| {
            texts.first()?.is_empty().then_some(())
        })
        .await
        .unwrap_or_else(|shown| panic!("the write problem still shown: {shown:?}"));
    browser.client.close().await.expect("close the session");
}
