//! The batching queue (TEI's design): one task owns the queue and forms batches by request count
//! and candidate budget, waiting at most `max_queue_delay` for a batch to fill (by default only
//! on a GPU: see [`BatchLimits::max_delay`]). Admission is
//! bounded (a full queue answers at once, never grows); a request larger than the candidate
//! budget runs alone (it never waits for room that cannot come); a request whose deadline passed
//! while it waited, or whose client went away, is not computed. On a GPU a batch is one engine
//! batch (one launch plan); on the CPU its requests run one by one on the pool's threads, each
//! answered when it is done (`run_each`).
//!
//! The owner is an OS thread living inside the engine's rayon pool (not a task of the async
//! runtime): the runtime's threads only do network I/O, a batch runs where its work runs (no
//! hand-off to another thread per batch, so the pool's keep-awake applies, as in `hcn bench`),
//! for the keep-awake window after a batch the owner polls the queue instead of sleeping (as the
//! pool's workers do), and the wait for a batch to fill uses the OS's timed wait (µs precision,
//! where tokio's timer has 1 ms).

use std::collections::VecDeque;
use std::sync::mpsc::{self, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::sync::oneshot;

use super::State;
use crate::{Error, ErrorKind, Request, Response, RunOptions};

/// The wait for a batch to fill where batches pay off, unless set (SPEC §7's default).
pub const DEFAULT_DELAY: Duration = Duration::from_micros(500);

/// How batches are formed (SPEC §7's flags).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_requests: usize,
    pub max_candidates: usize,
    /// The longest wait for a batch to fill. `None`: [`DEFAULT_DELAY`] where a batch pays off
    /// (`Engine::batches_pay_off`: a GPU), none on the CPU (a batch there runs request by
    /// request, so waiting only adds latency; requests that arrive while one runs form the next).
    pub max_delay: Option<Duration>,
    pub max_queue: usize,
}

/// What a request gets back: the engine's answer and where its time went.
pub struct Answer {
    pub result: crate::Result<Response>,
    pub queued: Duration,
    pub inference: Duration,
    /// Already counted in `hcn_requests_total` by the queue (a request whose deadline passed
    /// while queued: its client may be gone, so the handler may never see this answer).
    pub counted: bool,
}

pub struct Job {
    pub request: Request,
    pub options: RunOptions,
    pub arrived: Instant,
    pub reply: oneshot::Sender<Answer>,
    /// `"grpc"` or `"http"`, for the metrics.
    pub protocol: &'static str,
}

/// The handlers' side of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::SyncSender<Job>,
}

/// Why a job was not queued.
pub enum Rejected {
    /// The queue is full (RESOURCE_EXHAUSTED / 429).
    Full,
    /// The server is shutting down (UNAVAILABLE / 503).
    Closed,
}

impl Queue {
    /// Queues `job` or says at once why not.
    pub fn submit(&self, job: Job, state: &State) -> Result<(), Rejected> {
        match self.tx.try_send(job) {
            Ok(()) => {
                state.metrics.queue_depth.inc();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Rejected::Full),
            Err(TrySendError::Disconnected(_)) => Err(Rejected::Closed),
        }
    }
}

/// Starts the queue's owner on a worker of `pool`; it ends when every [`Queue`] is dropped and
/// the queue is empty.
pub fn start(
    state: Arc<State>,
    limits: BatchLimits,
    pool: Arc<rayon::ThreadPool>,
) -> (Queue, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::sync_channel(limits.max_queue.max(1));
    let owner = std::thread::Builder::new()
        .name("hcn-queue".into())
        .spawn(move || pool.install(|| run(rx, &state, limits)))
        .expect("starting the queue's thread");
    (Queue { tx }, owner)
}

/// The next job, waiting until `deadline` (`None`: until one comes or every sender is gone).
/// Until `awake_until` the wait polls, yielding the core between polls, instead of sleeping: a
/// sleeping thread is woken tens of µs late on a VM (its vCPU halts; see `crate::spin`), which
/// the next request would pay. The engine's workers poll for the same window after a batch.
fn next_job(
    rx: &mpsc::Receiver<Job>,
    deadline: Option<Instant>,
    awake_until: Instant,
) -> Option<Job> {
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return None;
        }
        if now >= awake_until {
            break;
        }
        std::thread::yield_now();
    }
    match deadline {
        None => rx.recv().ok(),
        // Timeout or disconnected: no job.
        Some(d) => rx
            .recv_timeout(d.saturating_duration_since(Instant::now()))
            .ok(),
    }
}

fn run(rx: mpsc::Receiver<Job>, state: &Arc<State>, limits: BatchLimits) {
    // A job taken from the queue that did not fit the batch being formed: it opens the next.
    let mut held: Option<Job> = None;
    let mut awake_until = Instant::now();
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match next_job(&rx, None, awake_until) {
                Some(j) => j,
                None => return,
            },
        };
        let mut batch = Vec::new();
        let mut candidates = 0usize;
        let delay = limits.max_delay.unwrap_or_else(|| {
            if state.engine.snapshot().batches_pay_off() {
                DEFAULT_DELAY
            } else {
                Duration::ZERO
            }
        });
        let deadline = Instant::now() + delay;
        let mut next = Some(first);
        loop {
            if let Some(job) = next.take() {
                state.metrics.queue_depth.dec();
                let m = job.request.candidates.len();
                // The first job always fits (one larger than the budget runs alone).
                if !batch.is_empty() && candidates + m > limits.max_candidates {
                    held = Some(job);
                    state.metrics.queue_depth.inc();
                    break;
                }
                candidates += m;
                batch.push(job);
            }
            if batch.len() >= limits.max_requests || candidates >= limits.max_candidates {
                break;
            }
            // Whatever is already waiting joins at once; then wait for more until the deadline.
            // None (the deadline, or every sender gone): the batch is what it is.
            next = next_job(&rx, Some(deadline), awake_until);
            if next.is_none() {
                break;
            }
        }
        execute(batch, state);
        awake_until = Instant::now() + state.options.keep_awake;
    }
}

/// Answers the jobs whose deadline passed while queued, drops those whose client went away, runs
/// the rest: as one engine batch where batches pay off (a GPU), else one by one ([`run_each`]).
fn execute(batch: Vec<Job>, state: &Arc<State>) {
    let now = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for job in batch {
        if job.options.deadline.is_some_and(|d| d <= now) {
            state
                .metrics
                .failed(job.protocol, ErrorKind::DeadlineExceeded);
            let _ = job.reply.send(Answer {
                result: Err(Error::DeadlineExceeded { stage: "queued" }),
                queued: now - job.arrived,
                inference: Duration::ZERO,
                counted: true,
            });
        } else if job
            .options
            .cancel
            .as_ref()
            .is_some_and(crate::CancelToken::is_cancelled)
        {
            // Nobody is waiting for the answer: counted here, never computed.
            state.metrics.failed(job.protocol, ErrorKind::Cancelled);
        } else {
            live.push(job);
        }
    }
    if live.is_empty() {
        return;
    }
    let candidates: usize = live.iter().map(|j| j.request.candidates.len()).sum();
    state.metrics.batch_requests.observe(live.len() as f64);
    state.metrics.batch_candidates.observe(candidates as f64);
    let engine = state.engine.snapshot();
    if !engine.batches_pay_off() {
        run_each(live, &engine, state);
        return;
    }
    let started = Instant::now();
    let calls: Vec<(&Request, &RunOptions)> =
        live.iter().map(|j| (&j.request, &j.options)).collect();
    let results = engine.run_batch_with(&calls);
    let inference = started.elapsed();
    for (job, result) in live.into_iter().zip(results) {
        reply(job, result, started, inference, state);
    }
}

/// The CPU's way through a batch (SPEC §7: request by request, in parallel): the pool's threads
/// take the jobs in arrival order, each job runs alone (its own work spread over the pool as in
/// `hcn bench`) and is answered the moment it is done. Run as one engine batch, every request
/// waited for the batch's last one: under bursts of arrivals a request's inference time became
/// the whole batch's (an open loop at 70% load: p99 26 ms against a 1.3 ms request).
fn run_each(live: Vec<Job>, engine: &crate::Engine, state: &Arc<State>) {
    let workers = rayon::current_num_threads().min(live.len());
    let queue = Mutex::new(VecDeque::from(live));
    let work = || loop {
        // A poisoned lock only means another worker panicked while popping: the queue is intact.
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(job) = next else { break };
        let started = Instant::now();
        let result = engine.run_with(&job.request, &job.options);
        reply(job, result, started, started.elapsed(), state);
    };
    if workers <= 1 {
        work();
    } else {
        (0..workers).into_par_iter().for_each(|_| work());
    }
}

/// Sends a job its answer (its queue time ends when its work `started`).
fn reply(
    job: Job,
    result: crate::Result<Response>,
    started: Instant,
    inference: Duration,
    state: &State,
) {
    let sent = job.reply.send(Answer {
        result,
        queued: started - job.arrived,
        inference,
        counted: false,
    });
    if sent.is_err() {
        // The client went away while its request ran (the work stopped at the engine's next
        // check): its handler is gone and will not count it. A client whose deadline passed is
        // counted under that.
        let kind = if job.options.deadline.is_some_and(|d| d <= Instant::now()) {
            ErrorKind::DeadlineExceeded
        } else {
            ErrorKind::Cancelled
        };
        state.metrics.failed(job.protocol, kind);
    }
}
