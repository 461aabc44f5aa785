//! Per-kernel device times: what [`Engine::kernel_times`](crate::Engine::kernel_times) returns
//! once [`Engine::set_kernel_timing`](crate::Engine::set_kernel_timing) turned timing on.
//!
//! On a GPU each launch of the batch plan is bracketed by two CUDA events recorded on the
//! executor's stream, and the time between them is read after the batch's one synchronisation;
//! under the CPU emulation the "events" are host timestamps around the (synchronous) launch. Off
//! by default: then a launch costs one relaxed atomic load more, nothing else.
//!
//! What an event pair measures: from the moment the device reaches the start event in its stream
//! to the end of the kernel. When the device is starved (a small batch whose launches the host
//! issues more slowly than the device runs them) that includes part of the host's launch latency,
//! so at batch 1 small kernels read a few µs long; a profiler's kernel duration (`ncu`) does not.
//! [`KernelTimes::span`] is the device time from the first launch of a batch to the end of its
//! last, gaps included: the GPU's share of a batch's latency, transfers excluded.

use serde::Serialize;

/// Summary of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Stat {
    /// Samples (launches, or batches for [`KernelTimes::span`]).
    pub count: u64,
    pub total_us: f64,
    pub mean_us: f64,
    /// The median of the first [`MAX_SAMPLES`] samples (count, total, min and max are exact).
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

/// Samples kept per kernel for the median; beyond them only count, total, min and max grow.
pub const MAX_SAMPLES: usize = 1 << 16;

/// The launches of one kernel at one place of the batch plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelTime {
    /// The entry point, e.g. `score_f16`, `attend_combine_f32`.
    pub kernel: String,
    /// Where the plan launches it (`src/cuda/plan.rs`), e.g. `score`, `tower.attend` (both
    /// towers' attention partials, every layer), `co_fusion`.
    pub site: String,
    #[serde(flatten)]
    pub stat: Stat,
    /// `total_us` over the batches timed: this kernel's share of one batch.
    pub per_batch_us: f64,
}

/// Per-kernel times since timing was last turned on.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct KernelTimes {
    /// Batches whose launches were timed (a batch that failed is not counted, nor its launches).
    pub batches: u64,
    /// Per batch: from the start of its first launch to the end of its last (device clock).
    pub span: Stat,
    /// One entry per (kernel, site), in the order the plan first launched them.
    pub kernels: Vec<KernelTime>,
    /// Launch times that could not be read back from the device (not in any figure above).
    pub dropped: u64,
}

/// Accumulates samples for one [`Stat`] (the CUDA executor's timer, `src/cuda/timing.rs`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    count: u64,
    total: f64,
    min: f64,
    max: f64,
    kept: Vec<f64>,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl Samples {
    pub(crate) fn add(&mut self, us: f64) {
        if self.count == 0 {
            self.min = us;
            self.max = us;
        } else {
            self.min = self.min.min(us);
            self.max = self.max.max(us);
        }
        self.count += 1;
        self.total += us;
        if self.kept.len() < MAX_SAMPLES {
            self.kept.push(us);
        }
    }

    pub(crate) fn stat(&self) -> Stat {
        if self.count == 0 {
            return Stat::default();
        }
        let mut v = self.kept.clone();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Stat {
            count: self.count,
            total_us: self.total,
            mean_us: self.total / self.count as f64,
            median_us: median,
            min_us: self.min,
            max_us: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_summarise() {
        let mut s = Samples::default();
        assert_eq!(s.stat(), Stat::default());
        for v in [4.0, 1.0, 3.0, 2.0] {
            s.add(v);
        }
        let st = s.stat();
        assert_eq!(st.count, 4);
        assert_eq!(st.total_us, 10.0);
        assert_eq!(st.mean_us, 2.5);
        assert_eq!(st.median_us, 2.5);
        assert_eq!((st.min_us, st.max_us), (1.0, 4.0));
        s.add(10.0);
        assert_eq!(s.stat().median_us, 3.0);
    }

    #[test]
    fn serialises_flat() {
        let k = KernelTime {
            kernel: "score_f16".into(),
            site: "score".into(),
            stat: Stat {
                count: 2,
                total_us: 3.0,
                mean_us: 1.5,
                median_us: 1.5,
                min_us: 1.0,
                max_us: 2.0,
            },
            per_batch_us: 1.5,
        };
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["kernel"], "score_f16");
        assert_eq!(v["count"], 2);
        assert_eq!(v["median_us"], 1.5);
    }
}
