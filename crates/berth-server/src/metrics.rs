//! `/metrics`, in the OpenMetrics text format, through `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Queued→claimed latency buckets, in seconds: from a runner waiting on its long poll (a few
/// milliseconds) to a queue no runner served for an hour.
const CLAIM_LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    claim_latency: Histogram,
    runs: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    runners_online: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<StatusLabel, Counter>::default();
        let claim_latency = Histogram::new(CLAIM_LATENCY_BUCKETS);
        let runs = Family::<StateLabel, Gauge>::default();
        let queue_depth = Gauge::default();
        let runners_online = Gauge::default();
        let mut registry = Registry::default();
        registry.register(
            "berth_http_requests",
            "API requests by status",
            requests.clone(),
        );
        registry.register(
            "berth_claim_latency_seconds",
            "Time from submission to claim",
            claim_latency.clone(),
        );
        registry.register("berth_runs", "Runs by state", runs.clone());
        registry.register(
            "berth_queue_depth",
            "Runs waiting for a runner",
            queue_depth.clone(),
        );
        registry.register(
            "berth_runners_online",
            "Runners heartbeating",
            runners_online.clone(),
        );
        Self {
            registry,
            requests,
            claim_latency,
            runs,
            queue_depth,
            runners_online,
        }
    }
}

impl Metrics {
    pub fn request(&self, status: u16) {
        self.requests.get_or_create(&StatusLabel { status }).inc();
    }

    /// A run was claimed `latency_ms` after it was queued.
    pub fn claimed(&self, latency_ms: i64) {
        self.claim_latency
            .observe(latency_ms.max(0) as f64 / 1000.0);
    }

    /// Renders everything, with the gauges read from the store by the caller.
    pub fn render(&self, runs_by_state: &[(String, i64)], runners_online: i64) -> String {
        for (state, n) in runs_by_state {
            self.runs
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        let queued = runs_by_state
            .iter()
            .find(|(s, _)| s == "queued")
            .map_or(0, |(_, n)| *n);
        self.queue_depth.set(queued);
        self.runners_online.set(runners_online);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_latency_is_a_histogram_in_seconds() {
        let metrics = Metrics::default();
        metrics.claimed(30);
        metrics.claimed(1_500);
        metrics.claimed(-5);
        let text = metrics.render(&[("queued".into(), 2)], 1);
        for line in [
            "# TYPE berth_claim_latency_seconds histogram",
            "berth_claim_latency_seconds_count 3",
            "berth_claim_latency_seconds_sum 1.53",
            "berth_claim_latency_seconds_bucket{le=\"0.005\"} 1",
            "berth_claim_latency_seconds_bucket{le=\"0.05\"} 2",
            "berth_claim_latency_seconds_bucket{le=\"1.0\"} 2",
            "berth_claim_latency_seconds_bucket{le=\"2.5\"} 3",
            "berth_claim_latency_seconds_bucket{le=\"+Inf\"} 3",
            "berth_runs{state=\"queued\"} 2",
            "berth_queue_depth 2",
            "berth_runners_online 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn requests_are_counted_by_status() {
        let metrics = Metrics::default();
        metrics.request(200);
        metrics.request(200);
        metrics.request(404);
        let text = metrics.render(&[], 0);
        assert!(
            text.contains("# TYPE berth_http_requests counter"),
            "{text}"
        );
        assert!(
            text.contains("berth_http_requests_total{status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_http_requests_total{status=\"404\"} 1"),
            "{text}"
        );
    }
}
