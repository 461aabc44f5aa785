//! Soak tests, bounded to well under a minute on two cores in release mode:
//!
//! - 64 threads share one `Engine` (`public_f16` fixture) and each serves 200 seeded random
//!   requests; every response equals the single-threaded one exactly;
//! - memory stays flat: resident set size (`VmRSS`) after a warm-up and after 20,000 more
//!   requests on one engine, and over 200 hot swaps, grows by less than a bound;
//! - hot swap releases the old engine: once the last in-flight request holding it finishes, its
//!   model and stores are dropped and their files are no longer mapped.
//!
//! `cargo test --release --test soak -- --nocapture` prints the figures (debug builds do 1/40 of
//! the work). The tests take a global lock so that one test's threads do not disturb another's
//! memory figures.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, Weak};
use std::time::Instant;

use hcn_prerank::store::IdIndex;
use hcn_prerank::{Engine, EngineOptions, ItemStore, Model, Parallelism, Request, SharedEngine};
use hcn_prerank::{Response, UserRequest};

/// Unoptimized builds (plain `cargo test`) run 1/40 of the work (unoptimized math is about 30 times
/// slower); the figures of RELIABILITY.md are from release builds.
const SCALE: usize = if cfg!(debug_assertions) { 40 } else { 1 };
const THREADS: usize = 64;
const REQUESTS_PER_THREAD: usize = 200 / SCALE;
const DISTINCT_REQUESTS: usize = 97;
const WARM_UP: usize = 2_000 / SCALE;
const LONG_RUN: usize = 20_000 / SCALE;
const SWAPS: usize = 200 / SCALE;
/// Allowed RSS growth over the long run (bytes).
const RSS_BOUND: u64 = 8 << 20;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn public() -> common::Case {
    common::cases()
        .into_iter()
        .find(|c| c.name == "public_f16")
        .expect("public_f16 fixture")
}

/// Resident set size in bytes: `VmRSS` of `/proc/self/status` (the resident field of
/// `/proc/self/statm`, already converted from pages by the kernel, so no page-size call is needed).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

use hcn_prerank::rng::SplitMix64 as Rng;

fn store_ids(store: &ItemStore) -> Vec<u64> {
    let mut ids: Vec<u64> = match &store.index {
        IdIndex::RowNumber => (0..store.len() as u64).collect(),
        IdIndex::Map(m) => m.keys().copied().collect(),
    };
    ids.sort_unstable();
    ids
}

/// Seeded requests of every shape the engine accepts: sequences from empty to twice the model's
/// length with unknown ids mixed in, 0–400 candidates with unknown ones and duplicates.
fn random_requests(engine: &Engine, n: usize, seed: u64) -> Vec<Request> {
    let cfg = &engine.model().config;
    let tokens = store_ids(engine.tokens());
    let cands = store_ids(engine.candidates());
    let mut rng = Rng::new(seed);
    let ids = |rng: &mut Rng, pool: &[u64], len: usize| -> Vec<u64> {
        (0..len)
            .map(|_| match rng.below(10) {
                0 => rng.next_u64(),
                _ => pool[rng.below(pool.len())],
            })
            .collect()
    };
    (0..n)
        .map(|_| {
            let long_len = rng.below(2 * cfg.long_len + 1);
            let short_len = rng.below(2 * cfg.short_len + 1);
            let n_cands = rng.below(401);
            let long = ids(&mut rng, &tokens, long_len);
            let short = ids(&mut rng, &tokens, short_len);
            let mut candidates = ids(&mut rng, &cands, n_cands);
            if n_cands > 3 {
                candidates[n_cands - 1] = candidates[0];
            }
            let fields = cfg
                .user_fields
                .iter()
                .map(|f| (f.name.clone(), rng.below(f.vocab) as u64))
                .collect();
            let dense = (0..cfg.user_dense)
                .map(|_| (rng.below(2001) as f32 - 1000.0) / 250.0)
                .collect();
            Request {
                user: UserRequest {
                    long,
                    short,
                    fields,
                    dense,
                },
                candidates,
            }
        })
        .collect()
}

fn load(case: &common::Case, parallelism: Parallelism) -> Engine {
    Engine::load(
        &case.model,
        &case.tokens,
        &case.candidates,
        EngineOptions {
            parallelism,
            ..Default::default()
        },
    )
    .unwrap()
}

/// 64 threads × 200 requests on one shared engine: every response equals the single-threaded
/// one (bit for bit: scores, top-k, interests, missing and skipped counts).
#[test]
fn sixty_four_threads_get_the_single_threaded_answers() {
    let _guard = serial();
    let case = public();
    let engine = Arc::new(load(&case, Parallelism::Rayon(0)));
    let mut requests = case.requests.clone();
    requests.extend(random_requests(&engine, DISTINCT_REQUESTS, 0x50a4));
    let single = load(&case, Parallelism::None);
    let want: Vec<Response> = requests
        .iter()
        .map(|r| single.run(r, Some(20)).unwrap())
        .collect();
    let (requests, want) = (Arc::new(requests), Arc::new(want));
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (engine, requests, want, barrier) = (
                engine.clone(),
                requests.clone(),
                want.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let mut served = 0usize;
                for i in 0..REQUESTS_PER_THREAD {
                    // Different threads walk the list with different strides, so the same
                    // request is in flight on many threads at once and in different company.
                    let r = (t * 31 + i * (1 + t % 7)) % requests.len();
                    let got = engine.run(&requests[r], Some(20)).unwrap();
                    assert_eq!(got, want[r], "thread {t}, request {r}");
                    served += 1;
                }
                served
            })
        })
        .collect();
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(served, THREADS * REQUESTS_PER_THREAD);
    println!(
        "load: {THREADS} threads x {REQUESTS_PER_THREAD} requests = {served} responses, all \
         equal to the single-threaded ones ({} distinct requests), {secs:.2} s, {:.0} requests/s",
        requests.len(),
        served as f64 / secs
    );
}

/// Resident memory after a warm-up and after 20,000 more requests on one engine.
#[test]
fn memory_stays_flat_over_a_long_run() {
    let _guard = serial();
    let case = public();
    let engine = load(&case, Parallelism::None);
    let requests = random_requests(&engine, DISTINCT_REQUESTS, 0xf1a7);
    let mut checksum = 0f64;
    let mut run = |n: usize| {
        for i in 0..n {
            let resp = engine.run(&requests[i % requests.len()], Some(20)).unwrap();
            checksum += resp.top_k.first().map_or(0.0, |t| f64::from(t.score));
        }
    };
    run(WARM_UP);
    let before = rss_bytes();
    let start = Instant::now();
    run(LONG_RUN);
    let secs = start.elapsed().as_secs_f64();
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    println!(
        "rss: {:.2} MiB after {WARM_UP} warm-up requests, {:.2} MiB after {LONG_RUN} more \
         ({:+.3} MiB; bound {:.0} MiB), {secs:.2} s, checksum {checksum:.3}",
        mib(before),
        mib(after),
        mib(after) - mib(before),
        mib(RSS_BOUND)
    );
    assert!(
        growth < RSS_BOUND,
        "RSS grew by {:.2} MiB over {LONG_RUN} requests",
        mib(growth)
    );
}

/// Hot swaps in a loop, each loading the files anew, with requests in between: no leak per swap.
#[test]
fn memory_stays_flat_over_many_hot_swaps() {
    let _guard = serial();
    let case = public();
    let shared = SharedEngine::new(load(&case, Parallelism::None));
    let requests = random_requests(&shared.snapshot(), 16, 0x5a4b);
    let cycle = |n: usize| {
        for i in 0..n {
            drop(shared.swap(load(&case, Parallelism::None)));
            let engine = shared.snapshot();
            for r in requests.iter().skip(i % 4).step_by(4) {
                engine.run(r, Some(20)).unwrap();
            }
        }
    };
    cycle(20);
    let before = rss_bytes();
    cycle(SWAPS);
    let after = rss_bytes();
    println!(
        "rss over hot swaps: {:.2} MiB after 20 swaps, {:.2} MiB after {SWAPS} more ({:+.3} MiB)",
        mib(before),
        mib(after),
        mib(after) - mib(before)
    );
    assert!(after.saturating_sub(before) < RSS_BOUND);
}

/// A copy of the fixture's three files in a fresh directory, removed on drop.
struct Copies {
    dir: PathBuf,
    model: PathBuf,
    tokens: PathBuf,
    candidates: PathBuf,
}

impl Copies {
    fn new(case: &common::Case, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hcn-soak-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = |from: &Path, name: &str| {
            let to = dir.join(name);
            std::fs::copy(from, &to).unwrap();
            to
        };
        Copies {
            model: copy(&case.model, "model.safetensors"),
            tokens: copy(&case.tokens, "tokens.safetensors"),
            candidates: copy(&case.candidates, "candidates.safetensors"),
            dir,
        }
    }

    /// How many of the three files `/proc/self/maps` shows mapped.
    fn mapped(&self) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        [&self.model, &self.tokens, &self.candidates]
            .iter()
            .filter(|p| maps.contains(p.to_str().unwrap()))
            .count()
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The old engine lives exactly as long as the last request that took it: after a swap it still
/// serves the requests holding it, then its model and stores are dropped and their files unmapped.
#[test]
fn hot_swap_releases_the_old_engine_after_in_flight_requests() {
    let _guard = serial();
    let case = public();
    let old_files = Copies::new(&case, "old");
    let model = Arc::new(Model::load(&old_files.model).unwrap());
    let tokens = Arc::new(ItemStore::load(&old_files.tokens).unwrap());
    let candidates = Arc::new(ItemStore::load(&old_files.candidates).unwrap());
    let (weak_model, weak_tokens, weak_cands): (Weak<Model>, Weak<ItemStore>, Weak<ItemStore>) = (
        Arc::downgrade(&model),
        Arc::downgrade(&tokens),
        Arc::downgrade(&candidates),
    );
    let old = Engine::new(model, tokens, candidates, EngineOptions::default()).unwrap();
    // Two files hold mapped tensors (the model keeps its field embedding tables mapped; the
    // stores their vectors); all three are mapped here.
    let mapped_before = old_files.mapped();
    assert!(
        mapped_before >= 2,
        "{mapped_before} of the old files mapped"
    );
    let shared = Arc::new(SharedEngine::new(old));
    let request = case.requests[0].clone();
    let want = shared.snapshot().run(&request, Some(20)).unwrap();

    // Workers under load; one of them holds its snapshot across the swap.
    let holding = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let holder = {
        let (shared, request, want, holding, release) = (
            shared.clone(),
            request.clone(),
            want.clone(),
            holding.clone(),
            release.clone(),
        );
        std::thread::spawn(move || {
            let engine = shared.snapshot();
            holding.wait();
            release.wait();
            // Still the old engine, still answering, after the swap.
            assert_eq!(engine.run(&request, Some(20)).unwrap(), want);
        })
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (shared, request, stop) = (shared.clone(), request.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 10 {
                    shared.snapshot().run(&request, Some(20)).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    holding.wait();
    // Let the workers run on the old engine for a while, and on the new one after the swap.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let new_files = Copies::new(&case, "new");
    let new = Engine::load(
        &new_files.model,
        &new_files.tokens,
        &new_files.candidates,
        EngineOptions::default(),
    )
    .unwrap();
    let previous = shared.swap(new);
    drop(previous);
    std::thread::sleep(std::time::Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    // Workers are done, but the holder still has the old engine.
    assert!(
        weak_model.upgrade().is_some(),
        "old engine freed while in use"
    );
    assert_eq!(old_files.mapped(), mapped_before);
    release.wait();
    holder.join().unwrap();
    // The last holder is gone: model, stores and mappings are released.
    assert!(weak_model.upgrade().is_none(), "old model still alive");
    assert!(
        weak_tokens.upgrade().is_none(),
        "old token store still alive"
    );
    assert!(
        weak_cands.upgrade().is_none(),
        "old candidate store still alive"
    );
    assert_eq!(old_files.mapped(), 0, "old files still mapped");
    // The new engine's files are mapped and it serves the same answers (same contents).
    assert!(new_files.mapped() >= 2);
    assert_eq!(shared.snapshot().run(&request, Some(20)).unwrap(), want);
    println!(
        "hot swap: {served} requests by 8 workers across the swap; old engine released after its \
         last in-flight request ({mapped_before} mapped files before, 0 after)"
    );
}
