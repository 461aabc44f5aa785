//! One tonic client sending requests back to back to `hcn serve`: the service's single-client
//! latency without the Python client (`scripts/grpc_load.py`) in the way — a diagnostic for
//! SERVING.md (what the transport and the server add to `hcn bench`), not a load generator.
//!
//! ```sh
//! cargo run --release --example grpc_latency -- http://127.0.0.1:50051 requests.jsonl MODEL [COUNT]
//! ```
//! Requests are SPEC §4 JSON lines, parsed against MODEL's config, sent with top_k = 1000 and
//! scores not returned. Prints one JSON line: client median / p90 and the server's medians.

use std::time::Instant;

use hcn_prerank::serve::pb::prerank_client::PrerankClient;
use hcn_prerank::serve::pb::ScoreRequest;
use hcn_prerank::Model;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file, model, rest @ ..] = args.as_slice() else {
        return Err("usage: grpc_latency TARGET REQUESTS.jsonl MODEL [COUNT]".into());
    };
    let count: usize = rest.first().map_or(Ok(200), |c| c.parse())?;
    let cfg = Model::load(model)?.config;
    let text = std::fs::read_to_string(file)?;
    let requests: Vec<ScoreRequest> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(200)
        .map(|l| {
            let r = hcn_prerank::json::parse_request(l, &cfg)?;
            Ok(ScoreRequest {
                long: r.user.long,
                short: r.user.short,
                fields: r.user.fields.into_iter().collect(),
                dense: r.user.dense,
                candidates: r.candidates,
                top_k: 1000,
                return_scores: false,
                return_interests: false,
            })
        })
        .collect::<Result<_, hcn_prerank::Error>>()?;
    if requests.is_empty() {
        return Err("no requests".into());
    }
    let mut client = PrerankClient::connect(target.clone())
        .await?
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (mut client_us, mut queue_us, mut inference_us) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count + 10 {
        let req = requests[i % requests.len()].clone();
        let t = Instant::now();
        let resp = client.score(req).await?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if i < 10 {
            continue; // warm-up
        }
        client_us.push(us);
        let md = resp.metadata();
        let get = |k: &str| md.get(k)?.to_str().ok()?.parse::<f64>().ok();
        queue_us.extend(get("x-queue-time-us"));
        inference_us.extend(get("x-inference-time-us"));
    }
    let median = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{{\"requests\": {count}, \"median_us\": {:.0}, \"p90_us\": {:.0}, \"server_queue_us_median\": {:.0}, \"server_inference_us_median\": {:.0}}}",
        median(&mut client_us, 0.5),
        median(&mut client_us, 0.9),
        median(&mut queue_us, 0.5),
        median(&mut inference_us, 0.5)
    );
    Ok(())
}
