//! SPEC §7's metrics, with their fixed names, in the Prometheus text format
//! (`prometheus-client`, the official Rust client).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub protocol: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub version: String,
    pub device: String,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    pub request_duration: Histogram,
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub batch_requests: Histogram,
    pub batch_candidates: Histogram,
    pub requests: Family<RequestLabels, Counter>,
    pub candidates: Counter,
    pub missing_candidates: Counter,
    pub skipped_behaviors: Counter,
    pub reloads: Family<ReloadLabels, Counter>,
    pub queue_depth: Gauge<i64, AtomicI64>,
    pub model_info: Family<ModelLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // Seconds from 10 µs to ~10 s.
        let seconds = || Histogram::new(exponential_buckets(1e-5, 2.0, 21));
        let m = Metrics {
            request_duration: seconds(),
            queue_duration: seconds(),
            inference_duration: seconds(),
            batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            batch_candidates: Histogram::new(exponential_buckets(1.0, 4.0, 12)),
            requests: Family::default(),
            candidates: Counter::default(),
            missing_candidates: Counter::default(),
            skipped_behaviors: Counter::default(),
            reloads: Family::default(),
            queue_depth: Gauge::default(),
            model_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "hcn_request_duration_seconds",
            "Request wall time, from arrival to answer",
            m.request_duration.clone(),
        );
        registry.register(
            "hcn_queue_duration_seconds",
            "Time a request waited in the batching queue",
            m.queue_duration.clone(),
        );
        registry.register(
            "hcn_inference_duration_seconds",
            "Engine time of the batch a request ran in",
            m.inference_duration.clone(),
        );
        registry.register(
            "hcn_batch_requests",
            "Requests per executed batch",
            m.batch_requests.clone(),
        );
        registry.register(
            "hcn_batch_candidates",
            "Candidates per executed batch",
            m.batch_candidates.clone(),
        );
        registry.register(
            "hcn_requests",
            "Requests answered, by protocol and status code",
            m.requests.clone(),
        );
        registry.register("hcn_candidates", "Candidates scored", m.candidates.clone());
        registry.register(
            "hcn_missing_candidates",
            "Candidates not in the candidate store",
            m.missing_candidates.clone(),
        );
        registry.register(
            "hcn_skipped_behaviors",
            "Behavior ids not in the token store",
            m.skipped_behaviors.clone(),
        );
        registry.register("hcn_reloads", "Model reloads, by result", m.reloads.clone());
        registry.register(
            "hcn_queue_depth",
            "Requests waiting in the batching queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "hcn_model_info",
            "The model being served (always 1)",
            m.model_info.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one answered request.
    pub fn answered(&self, protocol: &str, code: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol: protocol.into(),
                code: code.into(),
            })
            .inc();
    }

    /// [`Metrics::answered`] for a request that failed with `kind`, under the code its protocol
    /// answers that with (gRPC: the status code's name; HTTP: the status, `Cancelled` 499).
    pub fn failed(&self, protocol: &str, kind: crate::ErrorKind) {
        let code = if protocol == "grpc" {
            format!("{:?}", super::grpc::status_code(kind))
        } else {
            kind.http_status().to_string()
        };
        self.answered(protocol, &code);
    }

    /// Marks `version`/`device` as the model served (and no other).
    pub fn set_model(&self, version: &str, device: &str) {
        self.model_info.clear();
        self.model_info
            .get_or_create(&ModelLabels {
                version: version.into(),
                device: device.into(),
            })
            .set(1);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
