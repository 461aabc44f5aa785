//! Runs `examples/embed.rs` (the embedding API used as an external crate would: several threads,
//! k per request in one batch, model version, a deadline, error kinds, the engine's own pool)
//! and checks its summary. The example asserts each of its claims itself; this test makes them
//! part of the suite.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/embedder-… → target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_embedding_example_runs_and_keeps_its_promises() {
    let path = example("embed");
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    let out = Command::new(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(summary["answered"].as_u64().unwrap() > 0);
    assert_eq!(summary["model_version"].as_str().unwrap().len(), 16);
    assert_eq!(summary["global_pool_unbuilt"], true);
    // The deadline really stopped the work: the call returned long before the request's full
    // time would have passed (the measured overrun itself is reported in README.md).
    let overrun_ms = summary["deadline_overrun_median_us"].as_f64().unwrap() / 1e3;
    let full_ms = summary["full_1m_ms"].as_f64().unwrap();
    assert!(overrun_ms < full_ms / 2.0, "{summary}");
}
