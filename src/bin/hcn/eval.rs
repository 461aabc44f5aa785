//! `hcn eval`: offline quality of the engine's scores. Each line of `--data` is a SPEC §4 request
//! plus `"labels"`, one 0/1 per candidate. The engine scores every request; the (logit, label)
//! pairs of all scored candidates are pooled (candidates missing from the store have no score and
//! are left out) and one JSON line reports `{"requests", "examples", "auc", "logloss"}`.
//! Unlike `score`, a bad line stops the run with its line number: a metric over a silently
//! filtered data set would mislead.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use clap::Args;
use hcn_prerank::auc::{auc, logloss};
use hcn_prerank::json::{parse_labels, parse_request_value};
use hcn_prerank::{Engine, Error, Request};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::common::{load_engine, DeviceArg, EngineFiles};

/// Lines scored per engine batch.
const CHUNK: usize = 64;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub files: EngineFiles,
    /// JSON Lines: requests with a `labels` array (0/1 per candidate).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Where the engine runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
}

/// The output line; `auc` is `null` without both classes, `logloss` without examples.
#[derive(Serialize)]
struct Report {
    requests: usize,
    examples: usize,
    auc: Option<f64>,
    logloss: Option<f64>,
}

/// The pooled evaluation pairs.
#[derive(Default)]
struct Pooled {
    requests: usize,
    logits: Vec<f32>,
    labels: Vec<bool>,
}

pub fn run(args: EvalArgs) -> Result<(), String> {
    let engine = load_engine(&args.files, args.device)?;
    let shown = args.data.display();
    let file = File::open(&args.data).map_err(|e| format!("{shown}: {e}"))?;
    let mut pooled = Pooled::default();
    let mut chunk: Vec<(usize, String)> = Vec::with_capacity(CHUNK);
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{shown}: line {}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        chunk.push((i + 1, line));
        if chunk.len() == CHUNK {
            run_chunk(&engine, &chunk, &mut pooled).map_err(|e| format!("{shown}: {e}"))?;
            chunk.clear();
        }
    }
    run_chunk(&engine, &chunk, &mut pooled).map_err(|e| format!("{shown}: {e}"))?;

    let report = Report {
        requests: pooled.requests,
        examples: pooled.logits.len(),
        auc: auc(&pooled.logits, &pooled.labels),
        logloss: logloss(&pooled.logits, &pooled.labels),
    };
    let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    println!("{line}");
    Ok(())
}

fn run_chunk(
    engine: &Engine,
    lines: &[(usize, String)],
    pooled: &mut Pooled,
) -> Result<(), String> {
    let cfg = &engine.model().config;
    let parsed: Vec<(Request, Vec<bool>)> = lines
        .par_iter()
        .map(|(no, text)| {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| format!("line {no}: not valid JSON: {e}"))?;
            let request =
                parse_request_value(&value, cfg).map_err(|e| format!("line {no}: {e}"))?;
            let labels = parse_labels(&value, request.candidates.len())
                .map_err(|e| format!("line {no}: {e}"))?;
            Ok((request, labels))
        })
        .collect::<Result<_, String>>()?;
    let (requests, labels): (Vec<Request>, Vec<Vec<bool>>) = parsed.into_iter().unzip();
    let results = engine.run_batch(&requests, None);
    if results.len() != requests.len() {
        return Err("the engine returned fewer results than requests".into());
    }
    for ((result, labels), (no, _)) in results.into_iter().zip(labels).zip(lines) {
        let resp = result.map_err(|e: Error| format!("line {no}: {e}"))?;
        pooled.requests += 1;
        for (score, label) in resp.scores.iter().zip(labels) {
            if let Some(y) = score {
                pooled.logits.push(*y);
                pooled.labels.push(label);
            }
        }
    }
    Ok(())
}
