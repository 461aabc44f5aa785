//! Issue 6's acceptance: the engine's AUC on the bundled held-out set equals the PyTorch model's
//! (computed in float64 by `reference/train.py` and written to `weights/heldout_pytorch.json`) to
//! 1e-4, through the `hcn eval` command a user would run.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn engine_auc_equals_pytorch_auc_on_the_held_out_set() {
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let out = Command::new(env!("CARGO_BIN_EXE_hcn"))
        .args(["eval", "--model"])
        .arg(w.join("hcn-public.safetensors"))
        .arg("--tokens")
        .arg(w.join("tokens.safetensors"))
        .arg("--candidates")
        .arg(w.join("candidates.safetensors"))
        .arg("--data")
        .arg(w.join("heldout.jsonl"))
        .output()
        .expect("run hcn eval");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let torch: Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("heldout_pytorch.json")).unwrap())
            .unwrap();
    assert_eq!(engine["examples"], torch["pairs"]);
    assert_eq!(engine["requests"], torch["requests"]);
    for key in ["auc", "logloss"] {
        let (e, t) = (engine[key].as_f64().unwrap(), torch[key].as_f64().unwrap());
        assert!((e - t).abs() <= 1e-4, "{key}: engine {e}, PyTorch {t}");
    }
    // A trained model, not random weights: well above chance on this data.
    assert!(engine["auc"].as_f64().unwrap() > 0.75);
}
