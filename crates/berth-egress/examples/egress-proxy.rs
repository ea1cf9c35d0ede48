//! Runs the egress proxy on the sockets of a directory until killed, for benchmarks
//! (`bench/egress.py`) and manual checks: `egress-proxy DIR RULE...` (listener `proxy`).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: egress-proxy DIR RULE...");
    let rules: Vec<String> = args.collect();
    let decisions = Arc::new(AtomicU64::new(0));
    let d = decisions.clone();
    let _proxy = berth_egress::Proxy::start(
        std::fs::File::open(&dir).unwrap().into(),
        &["proxy".to_string()],
        berth_egress::Config {
            policy: berth_core::egress::Policy::new(&rules).unwrap(),
            ..Default::default()
        },
        Arc::new(move |_| {
            d.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .unwrap();
    println!("ready");
    tokio::signal::ctrl_c().await.ok();
    println!("{} decisions", decisions.load(Ordering::Relaxed));
}
