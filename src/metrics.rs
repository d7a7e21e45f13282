//! Counters, gauges and histograms of one relay, rendered as Prometheus text
//! on the admin port's `/metrics`.
//!
//! Every other module gets an `Arc<Metrics>` and bumps fields directly; the
//! handles are atomics, so the hot path takes no lock here. Label values are
//! `&'static str` so a label set never allocates.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ratelog::{Level, RateLog};

type Labels = [(&'static str, &'static str); 1];

/// How a downstream request was answered (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// Opened a slot and an upstream fetch.
    Miss,
    /// Joined a slot another request opened.
    Coalesced,
    /// Answered "not yet".
    NotYet,
    /// Answered with an error status.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::NotYet => "not_yet",
            Outcome::Error => "error",
        }
    }
}

/// All metrics of a relay.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    /// Upstream fetches by target (`parent` or `origin`) and result.
    upstream: Family<[(&'static str, &'static str); 2], Counter>,
    /// Requests refused by a limit, by reason.
    rejected: Family<Labels, Counter>,
    /// Body bytes received from upstreams.
    pub bytes_in: Counter,
    /// Body bytes handed to viewers.
    pub bytes_out: Counter,
    /// Of those, bytes sent from a memory file with `sendfile` (`spool`).
    pub sendfile_bytes: Counter,
    /// Memory files holding bodies (`spool`), as of the last fill start.
    pub spools: Gauge,
    /// Slots currently open.
    pub open_slots: Gauge,
    /// Viewers currently attached to a slot.
    pub parked_viewers: Gauge,
    /// Open downstream connections.
    pub connections: Gauge,
    /// Bytes charged to the cache.
    pub cache_bytes: Gauge,
    /// Entries in the cache.
    pub cache_entries: Gauge,
    /// Entries evicted to make room.
    pub cache_evictions: Counter,
    /// Seconds from a chunk's first upstream byte to that byte reaching each
    /// viewer that was already waiting for it.
    pub delivery: Histogram,
    /// The same observations in ten-second windows for the status page
    /// (see [`Metrics::observe_delivery`]).
    pub delivery_recent: crate::status::DelayRing,
    /// Chunk bytes held against `--memory-limit` (cache, slots, bodies still
    /// streaming, piece overhead).
    pub memory_used: Gauge,
    /// `--memory-limit` in bytes.
    pub memory_limit: Gauge,
    /// Parent relays configured (`--upstream`), set when rendered.
    pub parents: Gauge,
    /// Parent relays not marked down, set when rendered.
    pub parents_up: Gauge,
    /// Error responses (refused or failed requests) by reason.
    errors: Family<Labels, Counter>,
    /// Downstream connections the relay closed, by reason.
    closed: Family<Labels, Counter>,
    /// Upstream re-polls of a key by why (`not_yet`, `hold_404`).
    repolls: Family<Labels, Counter>,
    /// `--hold-404` holds by how they ended.
    holds: Family<Labels, Counter>,
    /// Rate-limited log of 5xx answers (load shedding, upstream failures).
    pub shed_log: RateLog,
    /// Rate-limited log of 4xx answers (refused requests).
    pub refused_log: RateLog,
}

impl Metrics {
    /// A fresh, registered set.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mlcache");
        let requests = Family::<Labels, Counter>::default();
        let upstream = Family::<[(&'static str, &'static str); 2], Counter>::default();
        let rejected = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let m = Metrics {
            requests,
            upstream,
            rejected,
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            sendfile_bytes: Counter::default(),
            spools: Gauge::default(),
            open_slots: Gauge::default(),
            parked_viewers: Gauge::default(),
            connections: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
            cache_evictions: Counter::default(),
            delivery: Histogram::new(exponential_buckets(0.000_01, 2.0, 22)),
            delivery_recent: crate::status::DelayRing::new(),
            memory_used: Gauge::default(),
            memory_limit: Gauge::default(),
            parents: Gauge::default(),
            parents_up: Gauge::default(),
            registry: Registry::default(),
            shed_log: RateLog::new("requests shed", Level::Warn, errors.clone()),
            refused_log: RateLog::new("requests refused", Level::Info, errors.clone()),
            errors,
            closed: Family::default(),
            repolls: Family::default(),
            holds: Family::default(),
        };
        registry.register(
            "requests",
            "Downstream requests by result",
            m.requests.clone(),
        );
        registry.register(
            "upstream_fetches",
            "Upstream requests by target and result",
            m.upstream.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused by a limit, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "bytes_in",
            "Body bytes received from upstream",
            m.bytes_in.clone(),
        );
        registry.register(
            "bytes_out",
            "Body bytes sent to viewers",
            m.bytes_out.clone(),
        );
        registry.register(
            "sendfile_bytes",
            "Body bytes sent to HTTP/1.1 viewers with sendfile from a memory file",
            m.sendfile_bytes.clone(),
        );
        registry.register(
            "spools",
            "Bodies held in memory files for sendfile (each holds a file descriptor)",
            m.spools.clone(),
        );
        registry.register(
            "open_slots",
            "In-flight upstream fetches",
            m.open_slots.clone(),
        );
        registry.register(
            "parked_viewers",
            "Viewers attached to an in-flight slot",
            m.parked_viewers.clone(),
        );
        registry.register(
            "connections",
            "Open downstream connections",
            m.connections.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes charged to the cache",
            m.cache_bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Objects in the cache",
            m.cache_entries.clone(),
        );
        registry.register(
            "cache_evictions",
            "Objects evicted from the cache",
            m.cache_evictions.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Time from a chunk's first upstream byte to its delivery to each waiting viewer",
            m.delivery.clone(),
        );
        registry.register(
            "memory_used_bytes",
            "Chunk bytes held against the memory budget",
            m.memory_used.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The memory budget",
            m.memory_limit.clone(),
        );
        registry.register(
            "upstream_parents",
            "Parent relays configured (--upstream)",
            m.parents.clone(),
        );
        registry.register(
            "upstream_parents_up",
            "Parent relays not marked down right now",
            m.parents_up.clone(),
        );
        registry.register(
            "error_responses",
            "Error responses by reason (logged as one summary line per log-interval)",
            m.errors.clone(),
        );
        registry.register(
            "connections_closed",
            "Downstream connections closed by the relay, by reason",
            m.closed.clone(),
        );
        registry.register(
            "upstream_repolls",
            "Upstream re-polls of a key nobody had yet, by reason (not_yet, hold_404)",
            m.repolls.clone(),
        );
        registry.register(
            "holds",
            "Viewers held on an origin 404 (--hold-404), by how the hold ended (object, not_found, abandoned, failed)",
            m.holds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one downstream request.
    pub fn request(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&[("result", outcome.label())])
            .inc();
    }

    /// Reads one `requests` counter.
    pub fn requests_of(&self, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&[("result", outcome.label())])
            .get()
    }

    /// Records one delivery delay (seconds) in the histogram and in the
    /// status page's recent windows.
    pub fn observe_delivery(&self, secs: f64) {
        self.delivery.observe(secs);
        self.delivery_recent.record(secs);
    }

    /// Counts one upstream fetch.
    pub fn upstream(&self, target: &'static str, result: &'static str) {
        self.upstream
            .get_or_create(&[("target", target), ("result", result)])
            .inc();
    }

    /// Counts one upstream re-poll of a key: `not_yet` (the upstream said
    /// "not yet") or `hold_404` (a held origin 404).
    pub fn repoll(&self, reason: &'static str) {
        self.repolls.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts one `--hold-404` hold that ended: `object` (it appeared),
    /// `not_found` (the hold ran out and the 404 went out), `abandoned`
    /// (every viewer left) or `failed` (the upstream failed meanwhile).
    pub fn hold_ended(&self, result: &'static str) {
        self.holds.get_or_create(&[("result", result)]).inc();
    }

    /// Counts one request refused by a limit.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts one downstream connection the relay closed: `idle` (no
    /// unfinished request for `idle-timeout`), `no_progress` (a response made
    /// no progress for `send-timeout`) or `over_limit` (over `max-connections`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&[("reason", reason)]).inc();
    }

    /// Reads one `connections_closed` counter.
    pub fn connections_closed_of(&self, reason: &'static str) -> u64 {
        self.closed.get_or_create(&[("reason", reason)]).get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request(Outcome::Coalesced);
        m.upstream("origin", "ok");
        m.delivery.observe(0.0002);
        let text = m.render();
        assert!(
            text.contains("mlcache_requests_total{result=\"coalesced\"} 1"),
            "{text}"
        );
        assert!(text.contains("mlcache_upstream_fetches_total{target=\"origin\",result=\"ok\"} 1"));
        assert!(text.contains("mlcache_delivery_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
