//! `hcn quantize --in S --out S8`: an I8 store (SPEC §3) from any store: per row
//! `scale = max|x| / 127` (0 for an all-zero row), `q = round-half-to-even(x / scale)`, ids
//! copied. Streams the rows (a 1M-row store never sits in memory twice) and replaces `--out`
//! atomically. Prints one JSON line: rows, dim, the input dtype, bytes before and after, rows
//! with a zero scale, and the largest `|x − scale · q|`.

use std::path::PathBuf;

use clap::Args;
use hcn_prerank::store::quantize::quantize_store;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The store to quantize (SPEC §3; F32, F16, BF16, or I8 again).
    #[arg(long = "in", value_name = "STORE")]
    pub input: PathBuf,
    /// Where to write the I8 store (may be `--in` itself: written aside, then renamed over it).
    #[arg(long = "out", value_name = "STORE")]
    pub output: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<(), String> {
    let r = quantize_store(&args.input, &args.output).map_err(|e| e.to_string())?;
    let line = serde_json::json!({
        "out": args.output.display().to_string(),
        "rows": r.rows,
        "dim": r.dim,
        "from": r.from,
        "vector_bytes_in": r.bytes_in,
        "vector_bytes_out": r.bytes_out,
        "zero_rows": r.zero_rows,
        "max_abs_error": r.max_abs_error,
    });
    println!("{line}");
    Ok(())
}
