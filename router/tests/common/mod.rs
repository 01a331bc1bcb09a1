//! What the auth tests share: a router of a test federation, in this process.

use clap::Parser;
use std::time::{Duration, Instant};
use tessera_testkit::Federation;

/// A router of `f`'s federation, in this process, with `flags`, once it has the map.
pub async fn router_of(f: &Federation, flags: &[&str]) -> router::Running {
    let placement = format!("--placement-endpoints={}", f.store());
    let mut args = vec!["router", &placement, "--bcrypt-cost=4"];
    if !flags.iter().any(|f| f.starts_with("--listen-client-urls")) {
        args.push("--listen-client-urls=http://127.0.0.1:0");
    }
    args.extend_from_slice(flags);
    let running = router::start(router::Config::parse_from(args)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.backends.routing().is_err() {
        assert!(Instant::now() < deadline, "the router never got the map");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}
