//! Counters for `/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    /// Sum and count of queued→claimed latencies, in milliseconds.
    claim_latency: Mutex<(u64, u64)>,
    claims: Mutex<u64>,
}

impl Metrics {
    pub fn request(&self, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry(status).or_default() += 1;
        }
    }

    pub fn claimed(&self, latency_ms: i64) {
        if let Ok(mut l) = self.claim_latency.lock() {
            l.0 += latency_ms.max(0) as u64;
            l.1 += 1;
        }
        if let Ok(mut c) = self.claims.lock() {
            *c += 1;
        }
    }

    /// Renders everything, with the gauges read from the store by the caller.
    pub fn render(&self, runs_by_state: &[(String, i64)], runners_online: i64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP berth_runs Runs by state.\n# TYPE berth_runs gauge"
        );
        for (state, n) in runs_by_state {
            let _ = writeln!(out, "berth_runs{{state=\"{state}\"}} {n}");
        }
        let queued = runs_by_state
            .iter()
            .find(|(s, _)| s == "queued")
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "# HELP berth_queue_depth Runs waiting for a runner.\n# TYPE berth_queue_depth gauge\nberth_queue_depth {queued}");
        let _ = writeln!(out, "# HELP berth_runners_online Runners heartbeating.\n# TYPE berth_runners_online gauge\nberth_runners_online {runners_online}");
        if let Ok(l) = self.claim_latency.lock() {
            let _ = writeln!(
                out,
                "# HELP berth_claim_latency_seconds Time from submission to claim.\n# TYPE berth_claim_latency_seconds summary\nberth_claim_latency_seconds_sum {}\nberth_claim_latency_seconds_count {}",
                l.0 as f64 / 1000.0,
                l.1
            );
        }
        if let Ok(map) = self.requests.lock() {
            let _ = writeln!(out, "# HELP berth_http_requests_total API requests by status.\n# TYPE berth_http_requests_total counter");
            for (status, n) in map.iter() {
                let _ = writeln!(out, "berth_http_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        out
    }
}
