//! `hcn score`: JSON Lines requests in, one line out per non-blank input line, in input order.
//!
//! Lines are read in chunks of [`CHUNK`]: a chunk is parsed and its responses formatted in parallel
//! (both cost about as much as scoring for tens of thousands of candidates), its valid requests go
//! to [`Engine::run_batch`] together, and its lines are written in order. So memory holds one
//! chunk, never the whole stream. A bad line (not UTF-8, not JSON, a rejected request, an engine
//! error) becomes its own `{"error": …}` line and the stream goes on.
//!
//! On stdin a chunk is also cut short, and the output flushed, whenever no further complete line
//! is buffered: the next read may block (a client that sends one request and waits for its
//! answer), so the lines already read are answered first.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use clap::Args;
use hcn_prerank::json::{error_json, parse_request, write_response, WHOLE_REQUEST};
use hcn_prerank::{Engine, Error, Request};
use rayon::prelude::*;

use crate::common::{load_engine, DeviceArg, EngineFiles};

/// Input buffer: large enough that many small requests arrive together (and form one batch),
/// while a line larger than it simply takes several reads.
const INPUT_BUFFER: usize = 1 << 20;

/// Requests per engine batch: enough to keep every core busy across requests, small enough that
/// a chunk's responses (~0.5 MB each at 50,000 candidates) stay a modest amount of memory.
const CHUNK: usize = 64;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub files: EngineFiles,
    /// JSON Lines requests: a file, or `-` for stdin.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub request: String,
    /// Also return the K best candidates (`top_k`), by score, ties by lower position.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Where the engine runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Also write the user's interests X^U (n rows of D floats).
    #[arg(long)]
    pub emit_interests: bool,
}

pub fn run(args: ScoreArgs) -> Result<(), String> {
    // The engine first: a bad model, store or device fails before any request is read.
    let engine = load_engine(&args.files, args.device)?;
    let interactive = args.request == "-";
    let source: Box<dyn Read> = if interactive {
        Box::new(io::stdin())
    } else {
        let path = PathBuf::from(&args.request);
        let file = File::open(&path)
            .map_err(|e| format!("cannot open requests {}: {e}", path.display()))?;
        Box::new(file)
    };
    let mut input = BufReader::with_capacity(INPUT_BUFFER, source);
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, stdout);
    serve(&engine, &mut input, interactive, &mut out, &args)?;
    out.flush().map_err(|e| format!("writing output: {e}"))
}

/// Reads every line of `input`, writes one line per non-blank one to `out`. With `interactive`, a
/// chunk is also run (and the output flushed) when the input buffer holds no further complete line.
fn serve<R: Read>(
    engine: &Engine,
    input: &mut BufReader<R>,
    interactive: bool,
    out: &mut impl Write,
    args: &ScoreArgs,
) -> Result<(), String> {
    // A line's text, or why it has none (not UTF-8).
    let mut chunk: Vec<Result<String, String>> = Vec::with_capacity(CHUNK);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("reading requests (after line {line_no}): {e}"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if !buf.iter().all(u8::is_ascii_whitespace) {
            chunk.push(match std::str::from_utf8(&buf) {
                Ok(s) => Ok(s.to_string()),
                Err(e) => Err(format!("line {line_no} is not valid UTF-8: {e}")),
            });
        }
        let may_block = interactive && !input.buffer().contains(&b'\n');
        if chunk.len() == CHUNK || (may_block && !chunk.is_empty()) {
            run_chunk(engine, &chunk, out, args)?;
            chunk.clear();
            if may_block {
                out.flush().map_err(|e| format!("writing output: {e}"))?;
            }
        }
    }
    if !chunk.is_empty() {
        run_chunk(engine, &chunk, out, args)?;
    }
    Ok(())
}

/// Parses, scores and writes one chunk of lines, preserving their order.
fn run_chunk(
    engine: &Engine,
    lines: &[Result<String, String>],
    out: &mut impl Write,
    args: &ScoreArgs,
) -> Result<(), String> {
    let cfg = &engine.model().config;
    let parsed: Vec<Result<Request, Error>> = lines
        .par_iter()
        .map(|line| match line {
            Ok(text) => parse_request(text, cfg),
            Err(reason) => Err(Error::request(WHOLE_REQUEST, reason.clone())),
        })
        .collect();

    // Valid requests go to the engine as one batch; `slots` remembers which lines they were.
    let mut requests = Vec::with_capacity(parsed.len());
    let mut slots: Vec<Option<Error>> = Vec::with_capacity(parsed.len());
    for p in parsed {
        match p {
            Ok(r) => {
                requests.push(r);
                slots.push(None);
            }
            Err(e) => slots.push(Some(e)),
        }
    }
    let mut results = engine.run_batch(&requests, args.top_k).into_iter();

    let outcomes: Vec<Result<hcn_prerank::Response, Error>> = slots
        .into_iter()
        .map(|slot| match slot {
            Some(e) => Err(e),
            None => results.next().unwrap_or_else(|| {
                Err(Error::Device(
                    "the engine returned fewer results than requests".into(),
                ))
            }),
        })
        .collect();
    let texts: Vec<Vec<u8>> = outcomes
        .par_iter()
        .map(|o| {
            let mut text = Vec::new();
            match o {
                Ok(resp) => {
                    // Writing into a Vec cannot fail.
                    let _ =
                        write_response(&mut text, resp, args.emit_interests, args.top_k.is_some());
                }
                Err(e) => {
                    text.extend_from_slice(error_json(e).as_bytes());
                    text.push(b'\n');
                }
            }
            text
        })
        .collect();
    for t in texts {
        out.write_all(&t)
            .map_err(|e| format!("writing output: {e}"))?;
    }
    Ok(())
}
