//! The JSON Lines wire format of `hcn score` (SPEC §4): one request per input line in, one
//! response (or `{"error": ...}`) per output line out. This module only checks the *shape* of a
//! request (types, id ranges, and, since it has the model's config, profile field names /
//! vocabularies and the dense length); the engine does the math and its own semantic checks.
//!
//! Parsing rules, beyond SPEC's:
//! - `candidates` is required; `long`, `short`, `fields`, `dense` are optional and `null` counts as
//!   absent. An absent `long`/`short` is an empty sequence. `fields` may be absent only when the
//!   model has no profile fields, `dense` only when it has no dense features.
//! - Ids are JSON integers in `0 ..= 2^64-1`. `1.0`, `1e3`, `-1`, `"7"` and `2^64` are all
//!   rejected: serde_json reads a number that is not an integer in `u64`/`i64` range as `f64`, so
//!   "is a `u64`" is exactly the test.
//! - Top-level keys this format does not define are ignored, so a caller may carry its own
//!   bookkeeping (a request id, `labels` for `hcn eval`) on the same line. With duplicate keys the
//!   last one wins (serde_json's rule).
//! - Every error is an [`Error::Request`] whose `field` is the JSON path at fault
//!   (`candidates[3]`, `fields.age`, `dense[2]`).
//!
//! Responses are written with keys in SPEC order; floats are F32 written in their shortest
//! round-trip form (serde_json formats `f32` with ryu). A non-finite F32 would be written `null`
//! (JSON has no NaN); the engine never produces one for a scored candidate.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::HcnConfig;
use crate::engine::{Request, Response, UserRequest};
use crate::error::{Error, Result};

/// The `field` of an error about the line as a whole (not JSON, not an object).
pub const WHOLE_REQUEST: &str = "request";

/// Longest rendering of an offending value quoted in an error message.
const MAX_FOUND_CHARS: usize = 48;

/// Parses one JSON Lines request (SPEC §4) against the model's config.
pub fn parse_request(line: &str, cfg: &HcnConfig) -> Result<Request> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| Error::request(WHOLE_REQUEST, format!("not valid JSON: {e}")))?;
    parse_request_value(&value, cfg)
}

/// [`parse_request`] on an already parsed JSON value (so a caller that reads extra keys from the
/// same line, like `hcn eval`'s `labels`, parses the text once).
pub fn parse_request_value(value: &Value, cfg: &HcnConfig) -> Result<Request> {
    let obj = value.as_object().ok_or_else(|| {
        Error::request(
            WHOLE_REQUEST,
            format!("expected a JSON object, found {}", describe(value)),
        )
    })?;
    let candidates = match present(obj, "candidates") {
        Some(v) => parse_ids("candidates", v)?,
        None => {
            return Err(Error::request(
                "candidates",
                "missing (every request needs a `candidates` list of item ids)",
            ))
        }
    };
    let long = present(obj, "long")
        .map(|v| parse_ids("long", v))
        .transpose()?
        .unwrap_or_default();
    let short = present(obj, "short")
        .map(|v| parse_ids("short", v))
        .transpose()?
        .unwrap_or_default();
    let fields = parse_fields(present(obj, "fields"), cfg)?;
    let dense = parse_dense(present(obj, "dense"), cfg)?;
    Ok(Request {
        user: UserRequest {
            long,
            short,
            fields,
            dense,
        },
        candidates,
    })
}

/// `obj[key]` unless absent or `null`.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn id_range_error(field: String, found: &Value) -> Error {
    Error::request(
        field,
        format!(
            "expected an integer id in 0..={}, found {}",
            u64::MAX,
            describe(found)
        ),
    )
}

/// A JSON array of ids, each an integer in `0 ..= u64::MAX`.
fn parse_ids(field: &str, value: &Value) -> Result<Vec<u64>> {
    let items = value.as_array().ok_or_else(|| {
        Error::request(
            field,
            format!(
                "expected an array of integer ids, found {}",
                describe(value)
            ),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| as_id(v).ok_or_else(|| id_range_error(format!("{field}[{i}]"), v)))
        .collect()
}

/// The id a JSON value holds, if it is an integer in `u64` range. `as_u64` alone is the right
/// test: it is `Some` only for a number serde_json parsed as an integer (`1.0`, `1e3` and anything
/// above `u64::MAX` are parsed as `f64` and give `None`).
fn as_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// `fields`: exactly the model's profile fields, each an id inside its vocabulary, returned in
/// config order.
fn parse_fields(value: Option<&Value>, cfg: &HcnConfig) -> Result<Vec<(String, u64)>> {
    let names = || {
        cfg.user_fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let empty = Map::new();
    let obj = match value {
        None if cfg.user_fields.is_empty() => &empty,
        None => {
            return Err(Error::request(
                "fields",
                format!("missing (the model's profile fields are: {})", names()),
            ))
        }
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(Error::request(
                "fields",
                format!(
                    "expected an object of field name to id, found {}",
                    describe(other)
                ),
            ))
        }
    };
    let mut out = Vec::with_capacity(cfg.user_fields.len());
    for f in &cfg.user_fields {
        let field = format!("fields.{}", f.name);
        let v = obj.get(&f.name).ok_or_else(|| {
            Error::request(
                field.clone(),
                format!("missing (the model's profile fields are: {})", names()),
            )
        })?;
        let id = as_id(v).ok_or_else(|| id_range_error(field.clone(), v))?;
        if id >= f.vocab as u64 {
            return Err(Error::request(
                field,
                format!(
                    "id {id} is outside the field's vocabulary 0..{} (vocab = {})",
                    f.vocab, f.vocab
                ),
            ));
        }
        out.push((f.name.clone(), id));
    }
    if let Some(unknown) = obj
        .keys()
        .find(|k| !cfg.user_fields.iter().any(|f| &f.name == *k))
    {
        let known = if cfg.user_fields.is_empty() {
            "the model has no profile fields".to_string()
        } else {
            format!("the model's profile fields are: {}", names())
        };
        return Err(Error::request(
            format!("fields.{unknown}"),
            format!("unknown profile field ({known})"),
        ));
    }
    Ok(out)
}

/// `dense`: exactly `user_dense` numbers, each finite as an F32.
fn parse_dense(value: Option<&Value>, cfg: &HcnConfig) -> Result<Vec<f32>> {
    let want = cfg.user_dense;
    let items = match value {
        None if want == 0 => return Ok(Vec::new()),
        None => {
            return Err(Error::request(
                "dense",
                format!("missing (the model expects {want} dense features)"),
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(Error::request(
                "dense",
                format!(
                    "expected an array of {want} numbers, found {}",
                    describe(other)
                ),
            ))
        }
    };
    if items.len() != want {
        return Err(Error::request(
            "dense",
            format!(
                "expected {want} values (the model's user_dense), found {}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = || format!("dense[{i}]");
            let x = v.as_f64().ok_or_else(|| {
                Error::request(
                    field(),
                    format!("expected a finite number, found {}", describe(v)),
                )
            })?;
            // serde_json never yields a non-finite f64, but a finite f64 such as 1e39 overflows f32.
            let x32 = x as f32;
            if !x.is_finite() || !x32.is_finite() {
                return Err(Error::request(
                    field(),
                    format!("{v} is not a finite F32 value (|x| must be below 3.4e38)"),
                ));
            }
            Ok(x32)
        })
        .collect()
}

/// `labels` of an `hcn eval` line: one `0`/`1` (or `false`/`true`) per candidate.
pub fn parse_labels(obj: &Value, candidates: usize) -> Result<Vec<bool>> {
    let items = match obj.get("labels") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(Error::request(
                "labels",
                "missing (an evaluation line needs one 0/1 label per candidate)",
            ))
        }
        Some(other) => {
            return Err(Error::request(
                "labels",
                format!("expected an array of 0/1, found {}", describe(other)),
            ))
        }
    };
    if items.len() != candidates {
        return Err(Error::request(
            "labels",
            format!(
                "expected one label per candidate ({candidates}), found {}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
            _ => Err(Error::request(
                format!("labels[{i}]"),
                format!("expected 0 or 1, found {}", describe(v)),
            )),
        })
        .collect()
}

/// A short rendering of an offending value for an error message.
fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("an array of {} elements", a.len()),
        Value::Object(_) => "an object".to_string(),
        _ => {
            let s = v.to_string();
            if s.chars().count() > MAX_FOUND_CHARS {
                let cut: String = s.chars().take(MAX_FOUND_CHARS).collect();
                format!("{cut}…")
            } else {
                s
            }
        }
    }
}

/// One top-k entry as written: `{"id": …, "score": …}`.
#[derive(Serialize)]
struct TopEntry {
    id: u64,
    score: f32,
}

/// The response line, fields in SPEC §4 order.
#[derive(Serialize)]
struct ResponseLine<'a> {
    scores: &'a [Option<f32>],
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Vec<TopEntry>>,
    missing_candidates: &'a [u64],
    skipped_behaviors: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    interests: Option<Vec<&'a [f32]>>,
}

impl<'a> ResponseLine<'a> {
    fn new(resp: &'a Response, emit_interests: bool, top_k_requested: bool) -> Self {
        // Row j of X^U; `get` keeps a malformed value (values shorter than n × D) from
        // panicking — such rows come out empty instead. Absent when the response has none.
        let interests = resp.interests.as_ref().filter(|_| emit_interests).map(|x| {
            (0..x.n)
                .map(|j| x.values.get(j * x.dim..(j + 1) * x.dim).unwrap_or(&[]))
                .collect()
        });
        ResponseLine {
            scores: &resp.scores,
            top_k: top_k_requested.then(|| {
                resp.top_k
                    .iter()
                    .map(|s| TopEntry {
                        id: s.id,
                        score: s.score,
                    })
                    .collect()
            }),
            missing_candidates: &resp.missing_candidates,
            skipped_behaviors: resp.skipped_behaviors,
            interests,
        }
    }
}

/// Writes one response line (with the trailing newline) to `w`, without building it in memory
/// first (a response to 50,000 candidates is ~0.5 MB of text).
pub fn write_response(
    mut w: impl Write,
    resp: &Response,
    emit_interests: bool,
    top_k_requested: bool,
) -> io::Result<()> {
    serde_json::to_writer(
        &mut w,
        &ResponseLine::new(resp, emit_interests, top_k_requested),
    )?;
    w.write_all(b"\n")
}

/// One response as a JSON line (no trailing newline). `top_k` is written only when
/// `top_k_requested` (the CLI's `--top-k` was given), `interests` only with `emit_interests`.
pub fn response_json(resp: &Response, emit_interests: bool, top_k_requested: bool) -> String {
    // Serializing plain numbers and slices into a String cannot fail.
    serde_json::to_string(&ResponseLine::new(resp, emit_interests, top_k_requested))
        .unwrap_or_else(|e| error_json(&Error::Device(format!("cannot write response: {e}"))))
}

/// `{"error": "<message>"}` for a request that failed.
pub fn error_json(err: &Error) -> String {
    serde_json::json!({ "error": err.to_string() }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Scored, UserInterests};

    fn cfg(fields: &str, dense: usize) -> HcnConfig {
        HcnConfig::from_json(&format!(
            r#"{{"format":"hcn/1","dim":4,"interests":2,"heads":2,"layers":1,"long_len":3,
                "short_len":2,"user_fields":{fields},"user_dense":{dense}}}"#
        ))
        .unwrap()
    }

    fn profiled() -> HcnConfig {
        cfg(
            r#"[{"name":"age","vocab":10},{"name":"gender","vocab":3}]"#,
            2,
        )
    }

    fn bare() -> HcnConfig {
        cfg("[]", 0)
    }

    /// Asserts `line` is rejected with `field` at fault and a reason containing `needle`.
    fn rejects(line: &str, c: &HcnConfig, field: &str, needle: &str) {
        match parse_request(line, c) {
            Err(Error::Request { field: f, reason }) => {
                assert_eq!(f, field, "{line}: wrong field (reason: {reason})");
                assert!(
                    reason.contains(needle),
                    "{line}: reason `{reason}` should contain `{needle}`"
                );
            }
            other => panic!("{line}: expected a request error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let r = parse_request(
            r#"{"long": [17, 5, 99], "short": [5, 99], "fields": {"gender": 1, "age": 3},
                "dense": [0.1, 2], "candidates": [4, 8, 18446744073709551615], "request_id": "x"}"#,
            &profiled(),
        )
        .unwrap();
        assert_eq!(r.user.long, vec![17, 5, 99]);
        assert_eq!(r.user.short, vec![5, 99]);
        // Config order, not the line's order.
        assert_eq!(
            r.user.fields,
            vec![("age".to_string(), 3), ("gender".to_string(), 1)]
        );
        assert_eq!(r.user.dense, vec![0.1f32, 2.0]);
        assert_eq!(r.candidates, vec![4, 8, u64::MAX]);
    }

    #[test]
    fn optional_parts_default_to_empty() {
        let r = parse_request(r#"{"candidates": []}"#, &bare()).unwrap();
        assert_eq!(r, Request::default());
        let r = parse_request(
            r#"{"candidates": [1], "long": null, "fields": {}, "dense": []}"#,
            &bare(),
        )
        .unwrap();
        assert_eq!(r.candidates, vec![1]);
        assert!(r.user.long.is_empty() && r.user.fields.is_empty() && r.user.dense.is_empty());
    }

    #[test]
    fn rejects_bad_ids_naming_field_and_index() {
        let c = bare();
        let max = u64::MAX.to_string();
        for (bad, shown) in [
            ("-1", "-1"),
            ("1.0", "1.0"),
            ("1e3", "1000.0"),
            ("\"7\"", "\"7\""),
            ("18446744073709551616", "1.8446744073709552e+19"),
            ("null", "null"),
            ("true", "true"),
            ("[1]", "an array"),
        ] {
            rejects(
                &format!(r#"{{"candidates": [1, 2, 3, {bad}]}}"#),
                &c,
                "candidates[3]",
                &format!("expected an integer id in 0..={max}, found {shown}"),
            );
            rejects(
                &format!(r#"{{"candidates": [], "long": [{bad}]}}"#),
                &c,
                "long[0]",
                "integer id",
            );
            rejects(
                &format!(r#"{{"candidates": [], "short": [0, {bad}]}}"#),
                &c,
                "short[1]",
                "integer id",
            );
        }
        let err = parse_request(r#"{"candidates": [-1]}"#, &c).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("bad request: candidates[0]: expected an integer id in 0..={max}, found -1")
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        let c = bare();
        rejects(r#"{"long": [1]}"#, &c, "candidates", "missing");
        rejects(r#"{"candidates": null}"#, &c, "candidates", "missing");
        rejects(r#"{"candidates": 5}"#, &c, "candidates", "array");
        rejects(r#"{"candidates": {"a": 1}}"#, &c, "candidates", "object");
        rejects(r#"{"candidates": [], "long": "1,2"}"#, &c, "long", "array");
        rejects(r#"[1, 2]"#, &c, WHOLE_REQUEST, "JSON object");
        rejects(r#"17"#, &c, WHOLE_REQUEST, "JSON object");
        rejects(r#"{"candidates": [1,"#, &c, WHOLE_REQUEST, "not valid JSON");
        rejects(r#""#, &c, WHOLE_REQUEST, "not valid JSON");
        rejects(
            r#"{"candidates": []} {}"#,
            &c,
            WHOLE_REQUEST,
            "not valid JSON",
        );
    }

    #[test]
    fn rejects_bad_fields() {
        let c = profiled();
        let ok_dense = r#""dense": [0, 0]"#;
        rejects(
            &format!(r#"{{"candidates": [], {ok_dense}}}"#),
            &c,
            "fields",
            "age, gender",
        );
        rejects(
            &format!(r#"{{"candidates": [], "fields": [3, 1], {ok_dense}}}"#),
            &c,
            "fields",
            "expected an object",
        );
        rejects(
            &format!(r#"{{"candidates": [], "fields": {{"age": 3}}, {ok_dense}}}"#),
            &c,
            "fields.gender",
            "missing",
        );
        rejects(
            &format!(
                r#"{{"candidates": [], "fields": {{"age": 3, "gender": 1, "zip": 7}}, {ok_dense}}}"#
            ),
            &c,
            "fields.zip",
            "unknown profile field",
        );
        rejects(
            &format!(r#"{{"candidates": [], "fields": {{"age": 10, "gender": 1}}, {ok_dense}}}"#),
            &c,
            "fields.age",
            "vocab = 10",
        );
        rejects(
            &format!(r#"{{"candidates": [], "fields": {{"age": 9, "gender": 3}}, {ok_dense}}}"#),
            &c,
            "fields.gender",
            "0..3",
        );
        rejects(
            &format!(r#"{{"candidates": [], "fields": {{"age": -1, "gender": 1}}, {ok_dense}}}"#),
            &c,
            "fields.age",
            "integer id",
        );
        rejects(
            &format!(r#"{{"candidates": [], "fields": {{"age": 2.0, "gender": 1}}, {ok_dense}}}"#),
            &c,
            "fields.age",
            "integer id",
        );
        // A model without fields accepts none.
        rejects(
            r#"{"candidates": [], "fields": {"age": 1}}"#,
            &bare(),
            "fields.age",
            "no profile fields",
        );
    }

    #[test]
    fn rejects_bad_dense() {
        let c = profiled();
        let f = r#""fields": {"age": 1, "gender": 0}"#;
        rejects(
            &format!(r#"{{"candidates": [], {f}}}"#),
            &c,
            "dense",
            "expects 2",
        );
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [1]}}"#),
            &c,
            "dense",
            "expected 2 values",
        );
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [1, 2, 3]}}"#),
            &c,
            "dense",
            "found 3",
        );
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": 1.5}}"#),
            &c,
            "dense",
            "array",
        );
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [1, "2"]}}"#),
            &c,
            "dense[1]",
            "finite number",
        );
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [null, 2]}}"#),
            &c,
            "dense[0]",
            "finite number",
        );
        // Finite as f64, infinite as f32.
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [1e39, 2]}}"#),
            &c,
            "dense[0]",
            "not a finite F32",
        );
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [0, -3.5e38]}}"#),
            &c,
            "dense[1]",
            "not a finite F32",
        );
        // Beyond f64: serde_json refuses the number, so the line is not valid JSON.
        rejects(
            &format!(r#"{{"candidates": [], {f}, "dense": [1e400, 2]}}"#),
            &c,
            WHOLE_REQUEST,
            "not valid JSON",
        );
        // A model without dense features accepts `[]` but nothing longer.
        rejects(
            r#"{"candidates": [], "dense": [0.5]}"#,
            &bare(),
            "dense",
            "expected 0 values",
        );
        let ok = parse_request(
            &format!(r#"{{"candidates": [], {f}, "dense": [3.4e38, -1e-45]}}"#),
            &c,
        )
        .unwrap();
        assert!(ok.user.dense.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn long_offending_values_are_shortened() {
        let long = "x".repeat(10_000);
        let err = parse_request(&format!(r#"{{"candidates": ["{long}"]}}"#), &bare()).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn parses_labels() {
        let v: Value = serde_json::from_str(r#"{"labels": [0, 1, true, false]}"#).unwrap();
        assert_eq!(parse_labels(&v, 4).unwrap(), vec![false, true, true, false]);
        assert!(parse_labels(&v, 3).is_err());
        for bad in [
            r#"{}"#,
            r#"{"labels": [2]}"#,
            r#"{"labels": [0.5]}"#,
            r#"{"labels": 1}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(matches!(parse_labels(&v, 1), Err(Error::Request { .. })));
        }
    }

    fn response() -> Response {
        Response {
            scores: vec![Some(0.1), None, Some(-1.5e-7), Some(3.4028235e38), None],
            top_k: vec![
                Scored {
                    position: 3,
                    id: 16,
                    score: 3.4028235e38,
                },
                Scored {
                    position: 0,
                    id: u64::MAX,
                    score: 0.1,
                },
            ],
            missing_candidates: vec![8, 23],
            skipped_behaviors: 2,
            interests: Some(UserInterests {
                n: 2,
                dim: 3,
                values: vec![1.0, 2.5, -0.333_333_34, 4.0, 1e-30, 6.0],
                skipped_behaviors: 2,
            }),
            model_version: "0123456789abcdef".into(),
            timings: Default::default(),
        }
    }

    #[test]
    fn response_round_trips_with_nulls_aligned_and_keys_in_order() {
        let r = response();
        let line = response_json(&r, true, true);
        assert!(!line.contains('\n'));
        // SPEC key order.
        let pos = |k: &str| line.find(&format!("\"{k}\"")).unwrap();
        assert!(pos("scores") < pos("top_k"));
        assert!(pos("top_k") < pos("missing_candidates"));
        assert!(pos("missing_candidates") < pos("skipped_behaviors"));
        assert!(pos("skipped_behaviors") < pos("interests"));

        let v: Value = serde_json::from_str(&line).unwrap();
        let scores = v["scores"].as_array().unwrap();
        assert_eq!(scores.len(), r.scores.len());
        for (got, want) in scores.iter().zip(&r.scores) {
            match want {
                // Shortest round-trip: parsing the text back as f32 gives the same bits.
                Some(x) => assert_eq!(got.as_f64().unwrap() as f32, *x),
                None => assert!(got.is_null()),
            }
        }
        let top = v["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["id"].as_u64(), Some(16));
        assert_eq!(top[1]["id"].as_u64(), Some(u64::MAX));
        assert_eq!(top[0]["score"].as_f64().unwrap() as f32, 3.4028235e38);
        assert_eq!(v["missing_candidates"], serde_json::json!([8, 23]));
        assert_eq!(v["skipped_behaviors"].as_u64(), Some(2));
        let rows = v["interests"].as_array().unwrap();
        let x = r.interests.as_ref().unwrap();
        assert_eq!(rows.len(), x.n);
        for (j, row) in rows.iter().enumerate() {
            let row: Vec<f32> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(row.as_slice(), x.row(j));
        }
    }

    #[test]
    fn shortest_representation() {
        let mut r = response();
        r.scores = vec![Some(0.1)];
        let line = response_json(&r, false, false);
        // f32 0.1 widened to f64 would print 0.10000000149011612.
        assert!(line.starts_with(r#"{"scores":[0.1],"#), "{line}");
    }

    #[test]
    fn optional_keys_follow_the_flags() {
        let r = response();
        let v: Value = serde_json::from_str(&response_json(&r, false, false)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(v.get("top_k").is_none() && v.get("interests").is_none());

        // --top-k given but nothing to return (e.g. every candidate missing): an empty list.
        let mut empty = r.clone();
        empty.top_k.clear();
        let v: Value = serde_json::from_str(&response_json(&empty, false, true)).unwrap();
        assert_eq!(v["top_k"], serde_json::json!([]));
    }

    #[test]
    fn write_response_matches_response_json() {
        let r = response();
        let mut buf = Vec::new();
        write_response(&mut buf, &r, true, false).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            format!("{}\n", response_json(&r, true, false))
        );
    }

    #[test]
    fn error_line_is_one_json_object() {
        let err = parse_request("{\"candidates\": [\"a\\\"b\\n\"]}", &bare()).unwrap_err();
        let line = error_json(&err);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
        assert_eq!(v["error"].as_str().unwrap(), err.to_string());
    }
}
