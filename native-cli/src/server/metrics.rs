//! What `/metrics` reports, in Prometheus' text format: requests by endpoint and status, tokens,
//! queue depth and busy slots, and histograms of request latency and time to first token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The server's counters, shared by the HTTP side and the engine.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cancelled: AtomicU64,
    busy_slots: AtomicU64,
    latency: Mutex<Histogram>,
    first_token: Mutex<Histogram>,
}

impl Metrics {
    /// One answered request.
    pub(crate) fn request(&self, endpoint: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((endpoint.to_owned(), status)).or_default() += 1;
        }
    }

    /// One finished generation.
    pub(crate) fn generation(
        &self,
        prompt_tokens: usize,
        generated: usize,
        total_s: f64,
        ttft_s: Option<f64>,
    ) {
        self.prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            h.observe(total_s);
        }
        if let (Some(t), Ok(mut h)) = (ttft_s, self.first_token.lock()) {
            h.observe(t);
        }
    }

    /// A generation stopped because its client went away.
    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Generations that stopped because their client went away.
    pub(crate) fn cancelled_count(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Slots generating now.
    pub(crate) fn set_busy_slots(&self, n: usize) {
        self.busy_slots.store(n as u64, Ordering::Relaxed);
    }

    /// The text format.
    pub(crate) fn render(&self, queued: usize, slots: usize) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP apr_requests_total HTTP requests answered, by endpoint and status.\n\
             # TYPE apr_requests_total counter\n",
        );
        if let Ok(map) = self.requests.lock() {
            for ((endpoint, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "apr_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "apr_prompt_tokens_total",
            "Prompt tokens of finished generations.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "apr_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "apr_cancelled_total",
            "Generations stopped because the client disconnected.",
            self.cancelled_count(),
        );
        gauge(
            &mut out,
            "apr_queue_depth",
            "Requests waiting for a slot.",
            queued as u64,
        );
        gauge(
            &mut out,
            "apr_slots_busy",
            "Slots generating now.",
            self.busy_slots.load(Ordering::Relaxed),
        );
        gauge(&mut out, "apr_slots", "Slots in all.", slots as u64);
        if let Ok(h) = self.latency.lock() {
            h.render(
                &mut out,
                "apr_request_duration_seconds",
                "From a generation request's arrival to its last token.",
            );
        }
        if let Ok(h) = self.first_token.lock() {
            h.render(
                &mut out,
                "apr_time_to_first_token_seconds",
                "From a generation request's arrival to its first token.",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.generation(3, 5, 0.2, Some(0.02));
        m.generation(4, 1, 20.0, None);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        let text = m.render(2, 4);
        assert!(text.contains("apr_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("apr_prompt_tokens_total 7"));
        assert!(text.contains("apr_generated_tokens_total 6"));
        assert!(text.contains("apr_request_duration_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("apr_request_duration_seconds_bucket{le=\"30\"} 2"));
        assert!(text.contains("apr_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("apr_time_to_first_token_seconds_count 1"));
        assert!(text.contains("apr_queue_depth 2"));
    }
}
