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
//! How a line is read: typed serde, straight from the text (no `serde_json::Value` in between, so
//! 50,000 candidate ids are 50,000 `u64`s and nothing else). Each top-level key's value is read
//! by its own seed under a [`serde_path_to_error`] tracker (`Keyed`); a visitor that finds a
//! wrong value reads that value (or the rest of its array) to the end and raises a `Fault`, so
//! the path comes from the tracker (`candidates` + `[3]`) and the parse goes on. The errors are
//! then ranked as the rules above rank them: a line that is not valid JSON first, then
//! `candidates`, `long`, `short`, `fields`, `dense` (the last duplicate of a key counting).
//! Checks that need a whole value (the dense length, every profile field in config order) are
//! made once it is read, naming the field themselves.
//!
//! Responses are written with keys in SPEC order; floats are F32 written in their shortest
//! round-trip form (serde_json formats `f32` with ryu). A non-finite F32 would be written `null`
//! (JSON has no NaN); the engine never produces one for a scored candidate.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::{self, Write};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_path_to_error::{Path, Segment, Track};

use crate::config::HcnConfig;
use crate::engine::{Request, Response, UserRequest};
use crate::error::{Error, Result};

/// The `field` of an error about the line as a whole (not JSON, not an object).
pub const WHOLE_REQUEST: &str = "request";

/// Longest rendering of an offending value quoted in an error message.
const MAX_FOUND_CHARS: usize = 48;

/// Parses one JSON Lines request (SPEC §4) against the model's config.
pub fn parse_request(line: &str, cfg: &HcnConfig) -> Result<Request> {
    parse_line(line, cfg, None)
}

/// The keys an HTTP request body may add to a §4 request (SPEC §7).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServiceKeys {
    /// `"top_k": K` (`null` or absent: no top-k).
    pub top_k: Option<u64>,
    /// `"emit_interests": true`.
    pub emit_interests: bool,
}

/// [`parse_request`] plus SPEC §7's `top_k` and `emit_interests`, in one read of the text. A
/// wrong request is reported first (as [`parse_request`] would), then a wrong `top_k`, then a
/// wrong `emit_interests`.
pub fn parse_service_request(line: &str, cfg: &HcnConfig) -> Result<(Request, ServiceKeys)> {
    let keys = ServiceKeysSlot::default();
    let request = parse_line(line, cfg, Some(&keys))?;
    let top_k = keys.top_k.take().unwrap_or(Ok(None))?;
    let emit_interests = keys.emit_interests.take().unwrap_or(Ok(false))?;
    Ok((
        request,
        ServiceKeys {
            top_k,
            emit_interests,
        },
    ))
}

/// What [`RequestVisitor`] found under the service's keys (the last duplicate wins).
#[derive(Default)]
struct ServiceKeysSlot {
    top_k: Cell<Option<Result<Option<u64>>>>,
    emit_interests: Cell<Option<Result<bool>>>,
}

fn parse_line(line: &str, cfg: &HcnConfig, keys: Option<&ServiceKeysSlot>) -> Result<Request> {
    read_again_if_rejected(|track| {
        let mut de = serde_json::Deserializer::from_str(line);
        // As `serde_json::from_str`: the value, then nothing but whitespace.
        match de
            .deserialize_any(RequestVisitor { cfg, track, keys })
            .and_then(|parsed| de.end().map(|()| parsed))
        {
            Ok(parsed) => request_or_not_object(parsed),
            // Every wrong *value* is caught below its key, so what arrives here is a syntax
            // error (or the nesting limit, or a number beyond f64), wherever in the line it is.
            Err(e) => Err(Error::request(
                WHOLE_REQUEST,
                format!("not valid JSON: {e}"),
            )),
        }
    })
}

/// [`parse_request`] on an already parsed JSON value (so a caller that reads extra keys from the
/// same line, like `hcn eval`'s `labels`, parses the text once).
pub fn parse_request_value(value: &Value, cfg: &HcnConfig) -> Result<Request> {
    read_again_if_rejected(|track| {
        match Deserializer::deserialize_any(
            value,
            RequestVisitor {
                cfg,
                track,
                keys: None,
            },
        ) {
            Ok(parsed) => request_or_not_object(parsed),
            // A `Value` is valid JSON, so this does not happen.
            Err(e) => Err(Error::request(WHOLE_REQUEST, e.to_string())),
        }
    })
}

/// Reads a request without path tracking (`read(false)`): tracking every element costs about a
/// third of the parse of 50,000 candidate ids. When a wrong value was found that way, the error
/// does not know its path yet (its `field` is empty, see [`Keyed`]), so the request is read again
/// with tracking (`read(true)`: same checks, same order, same error, now with its path). Errors
/// found once a value is read (a missing key, an id outside its vocabulary, a dense length) name
/// their field themselves and cost no second read.
fn read_again_if_rejected(read: impl Fn(bool) -> Result<Request>) -> Result<Request> {
    match read(false) {
        Err(Error::Request { field, .. }) if field.is_empty() => read(true),
        done => done,
    }
}

fn request_or_not_object(parsed: Result<Result<Request>, String>) -> Result<Request> {
    parsed.unwrap_or_else(|found| {
        Err(Error::request(
            WHOLE_REQUEST,
            format!("expected a JSON object, found {found}"),
        ))
    })
}

/// `labels` of an `hcn eval` line: one `0`/`1` (or `false`/`true`) per candidate.
pub fn parse_labels(obj: &Value, candidates: usize) -> Result<Vec<bool>> {
    let labels = Deserializer::deserialize_any(obj, LabelsLine { candidates })
        .unwrap_or_else(|e| Ok(Some(Err(Error::request("labels", e.to_string())))));
    // Not an object: no `labels` either.
    labels.ok().flatten().unwrap_or_else(|| {
        Err(Error::request(
            "labels",
            "missing (an evaluation line needs one 0/1 label per candidate)",
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Reading helpers, shared with the config (src/config.rs)
// ---------------------------------------------------------------------------------------------

/// Why the value being read is wrong, recorded by the visitor that found it. `sub` is a path
/// below the tracked value that the tracker cannot see (`.name` when a whole `user_fields` entry
/// was read before its `name` was judged); `reason` is the message.
#[derive(Default)]
pub(crate) struct Fault(Cell<Option<(&'static str, String)>>);

impl Fault {
    /// Records the fault and returns the error that unwinds to the enclosing [`Keyed`]. The
    /// caller must have read the offending value to its end.
    pub(crate) fn raise<E: de::Error>(&self, sub: &'static str, reason: String) -> E {
        let err = E::custom(&reason);
        self.0.set(Some((sub, reason)));
        err
    }

    pub(crate) fn is_raised(&self) -> bool {
        let f = self.0.take();
        let raised = f.is_some();
        self.0.set(f);
        raised
    }

    fn clear(&self) {
        self.0.set(None);
    }
}

/// A seed that may raise a [`Fault`] (read under [`Keyed`]).
pub(crate) trait FaultSeed<'de> {
    type Value;
    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Self::Value, D::Error>;
}

/// The value of the key `key`, read by `seed`, with `track`: under a fresh
/// [`serde_path_to_error`] tracker. A [`Fault`] raised inside comes out as
/// `Ok(Err((path, reason)))`, `path` being `key`, the tracked path below it (`[3]`, `.age`) and
/// the fault's `sub`; without `track`, `path` is empty (not known). The parser is past the value,
/// so the caller reads on. Any other error (a syntax error) passes through.
pub(crate) struct Keyed<'k, S> {
    pub key: &'k str,
    pub seed: S,
    pub track: bool,
}

impl<'de, S: FaultSeed<'de>> DeserializeSeed<'de> for Keyed<'_, S> {
    type Value = Result<S::Value, (String, String)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let fault = Fault::default();
        let (got, path) = if self.track {
            let mut track = Track::new();
            let got = self.seed.deserialize(
                serde_path_to_error::Deserializer::new(d, &mut track),
                &fault,
            );
            (got, Some(track.path()))
        } else {
            (self.seed.deserialize(d, &fault), None)
        };
        match (got, fault.0.take()) {
            (Ok(value), _) => Ok(Ok(value)),
            (Err(_), Some((sub, reason))) => Ok(Err((
                path.map_or_else(String::new, |path| path_of(self.key, &path, sub)),
                reason,
            ))),
            (Err(e), None) => Err(e),
        }
    }
}

/// `key`, then `path` (`[3]`, `.age`), then `sub`.
fn path_of(key: &str, path: &Path, sub: &str) -> String {
    let mut s = key.to_string();
    for segment in path {
        // Writing to a String cannot fail.
        let _ = match segment {
            Segment::Seq { index } => write!(s, "[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => write!(s, ".{key}"),
            Segment::Unknown => write!(s, ".?"),
        };
    }
    s.push_str(sub);
    s
}

/// After an element of `seq` raised a [`Fault`] (or before one is raised about `seq` as a
/// whole): reads the rest of the array, so the parser is past it, and counts it. A syntax error
/// there is the error that counts, so it clears the fault.
pub(crate) fn finish_seq<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    fault: &Fault,
) -> Result<usize, A::Error> {
    count(seq).inspect_err(|_| fault.clear())
}

fn count<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<usize, A::Error> {
    let mut n = 0;
    while seq.next_element::<Skip>()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Any JSON value, read and dropped with every check parsing it into a `serde_json::Value` would
/// make (number range, string escapes, the nesting limit), which `IgnoredAny` skips.
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        count(&mut seq).map(|_| Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// A seed that reads any JSON value with the visitor it holds.
pub(crate) struct AnyOf<V>(pub V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for AnyOf<V> {
    type Value = V::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        d.deserialize_any(self.0)
    }
}

/// In a visitor whose value is `Result<T, F>`: the `visit_*` methods of the JSON types it does
/// not accept, each giving `Err` of what the visitor `$found` (whose value is `F`) makes of the
/// value — read to its end either way.
macro_rules! reject {
    ($found:expr; $($kind:ident)*) => { $(reject!(@ $found, $kind);)* };
    (@ $found:expr, bool) => {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Self::Value, E> {
            serde::de::Visitor::visit_bool($found, v).map(Err)
        }
    };
    (@ $found:expr, i64) => {
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
            serde::de::Visitor::visit_i64($found, v).map(Err)
        }
    };
    (@ $found:expr, u64) => {
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
            serde::de::Visitor::visit_u64($found, v).map(Err)
        }
    };
    (@ $found:expr, f64) => {
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
            serde::de::Visitor::visit_f64($found, v).map(Err)
        }
    };
    (@ $found:expr, str) => {
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
            serde::de::Visitor::visit_str($found, v).map(Err)
        }
    };
    (@ $found:expr, unit) => {
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            serde::de::Visitor::visit_unit($found).map(Err)
        }
    };
    (@ $found:expr, seq) => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            serde::de::Visitor::visit_seq($found, seq).map(Err)
        }
    };
    (@ $found:expr, map) => {
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            serde::de::Visitor::visit_map($found, map).map(Err)
        }
    };
}
pub(crate) use reject;

// ---------------------------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------------------------

/// A short rendering of an offending value for an error message (`found …`): a scalar as JSON
/// (shortened), `an array of N elements`, `an object`.
struct Found;

/// [`Found`]'s rendering of an already read value.
fn quoted(v: &Value) -> String {
    Deserializer::deserialize_any(v, Found).unwrap_or_else(|e| e.to_string())
}

fn shorten(s: String) -> String {
    if s.chars().count() > MAX_FOUND_CHARS {
        let cut: String = s.chars().take(MAX_FOUND_CHARS).collect();
        format!("{cut}…")
    } else {
        s
    }
}

impl<'de> Visitor<'de> for Found {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        // serde_json's own rendering (`1000.0`, `1.8446744073709552e+19`).
        Ok(shorten(Value::from(v).to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(shorten(Value::from(v).to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok("null".to_string())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        Ok(format!("an array of {} elements", count(&mut seq)?))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok("an object".to_string())
    }
}

/// A value that may be absent (`None`: the key is missing or `null`), or wrong.
type Slot<T> = Option<Result<T>>;

fn slot<T>(read: Result<Slot<T>, (String, String)>) -> Slot<T> {
    read.unwrap_or_else(|(field, reason)| Some(Err(Error::request(field, reason))))
}

/// The request object: each key's value read as its type (later duplicates replace earlier
/// ones), then the errors ranked. `Err`: the line is not an object (what it is).
struct RequestVisitor<'c> {
    cfg: &'c HcnConfig,
    track: bool,
    /// Where `top_k` and `emit_interests` go; `None`: they are unknown keys (ignored).
    keys: Option<&'c ServiceKeysSlot>,
}

enum TopKey {
    Candidates,
    Long,
    Short,
    Fields,
    Dense,
    TopK,
    EmitInterests,
    Other,
}

struct TopKeyVisitor;

impl<'de> Visitor<'de> for TopKeyVisitor {
    type Value = TopKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TopKey, E> {
        Ok(match v {
            "candidates" => TopKey::Candidates,
            "long" => TopKey::Long,
            "short" => TopKey::Short,
            "fields" => TopKey::Fields,
            "dense" => TopKey::Dense,
            "top_k" => TopKey::TopK,
            "emit_interests" => TopKey::EmitInterests,
            _ => TopKey::Other,
        })
    }
}

impl<'de> Visitor<'de> for RequestVisitor<'_> {
    type Value = Result<Result<Request>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (cfg, track) = (self.cfg, self.track);
        let (mut candidates, mut long, mut short, mut fields, mut dense) =
            (None, None, None, None, None);
        // The value of `key`, read by `seed`, a fault made a request error.
        macro_rules! read {
            ($key:literal, $seed:expr) => {
                slot(map.next_value_seed(Keyed {
                    key: $key,
                    seed: $seed,
                    track,
                })?)
            };
        }
        while let Some(key) = map.next_key_seed(AnyOf(TopKeyVisitor))? {
            match key {
                TopKey::Candidates => candidates = read!("candidates", IdsSeed),
                TopKey::Long => long = read!("long", IdsSeed),
                TopKey::Short => short = read!("short", IdsSeed),
                TopKey::Fields => fields = read!("fields", FieldsSeed { cfg }),
                TopKey::Dense => {
                    dense = read!(
                        "dense",
                        DenseSeed {
                            want: cfg.user_dense
                        }
                    )
                }
                TopKey::TopK if let Some(keys) = self.keys => {
                    let v: Value = map.next_value()?;
                    let got = match v {
                        Value::Null => Ok(None),
                        Value::Number(ref n) if n.as_u64().is_some() => Ok(n.as_u64()),
                        other => Err(Error::request(
                            "top_k",
                            format!("expected a non-negative integer, found {}", quoted(&other)),
                        )),
                    };
                    keys.top_k.set(Some(got));
                }
                TopKey::EmitInterests if let Some(keys) = self.keys => {
                    let v: Value = map.next_value()?;
                    let got = match v {
                        Value::Bool(b) => Ok(b),
                        other => Err(Error::request(
                            "emit_interests",
                            format!("expected true or false, found {}", quoted(&other)),
                        )),
                    };
                    keys.emit_interests.set(Some(got));
                }
                TopKey::TopK | TopKey::EmitInterests | TopKey::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Ok(assemble(cfg, candidates, long, short, fields, dense)))
    }

    reject!(Found; bool i64 u64 f64 str unit seq);
}

/// The request from its parts, or the first error in SPEC order.
fn assemble(
    cfg: &HcnConfig,
    candidates: Slot<Vec<u64>>,
    long: Slot<Vec<u64>>,
    short: Slot<Vec<u64>>,
    fields: Slot<Vec<(String, u64)>>,
    dense: Slot<Vec<f32>>,
) -> Result<Request> {
    let candidates = candidates.unwrap_or_else(|| {
        Err(Error::request(
            "candidates",
            "missing (every request needs a `candidates` list of item ids)",
        ))
    })?;
    let long = long.transpose()?.unwrap_or_default();
    let short = short.transpose()?.unwrap_or_default();
    let fields = match fields {
        Some(fields) => fields?,
        None if cfg.user_fields.is_empty() => Vec::new(),
        None => {
            return Err(Error::request(
                "fields",
                format!(
                    "missing (the model's profile fields are: {})",
                    field_names(cfg)
                ),
            ))
        }
    };
    let want = cfg.user_dense;
    let dense = match dense {
        Some(dense) => dense?,
        None if want == 0 => Vec::new(),
        None => {
            return Err(Error::request(
                "dense",
                format!("missing (the model expects {want} dense features)"),
            ))
        }
    };
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

fn field_names(cfg: &HcnConfig) -> String {
    cfg.user_fields
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn id_reason(found: &str) -> String {
    format!("expected an integer id in 0..={}, found {found}", u64::MAX)
}

/// An id: a JSON integer in `0 ..= u64::MAX` (serde_json reads `1.0`, `1e3` and anything above
/// `u64::MAX` as `f64`, a negative integer as `i64`). `Err`: what it is instead.
struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = Result<u64, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer id")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Ok(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_err(|_| v.to_string()))
    }

    reject!(Found; bool f64 str unit seq map);
}

/// One element of an id list: a wrong one raises a fault there (so its index is tracked). The
/// visitor raises it itself, so the hot path returns a bare `u64`, and everything but `visit_u64`
/// is cold and out of line, which keeps serde_json's `deserialize_any` small enough to be fast
/// (measured: 0.4 ms of 1.2 ms for 50,000 ids otherwise).
struct IdSeed<'f> {
    fault: &'f Fault,
}

impl<'de> DeserializeSeed<'de> for IdSeed<'_> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl IdSeed<'_> {
    #[cold]
    fn wrong<E: de::Error>(self, found: Result<String, E>) -> Result<u64, E> {
        Err(self.fault.raise("", id_reason(&found?)))
    }
}

impl<'de> Visitor<'de> for IdSeed<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer id")
    }

    #[inline]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    #[cold]
    #[inline(never)]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(id) => Ok(id),
            Err(_) => self.wrong(Found.visit_i64(v)),
        }
    }

    #[cold]
    #[inline(never)]
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u64, E> {
        self.wrong(Found.visit_bool(v))
    }

    #[cold]
    #[inline(never)]
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        self.wrong(Found.visit_f64(v))
    }

    #[cold]
    #[inline(never)]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        self.wrong(Found.visit_str(v))
    }

    #[cold]
    #[inline(never)]
    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        self.wrong(Found.visit_unit())
    }

    #[cold]
    #[inline(never)]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u64, A::Error> {
        self.wrong(Found.visit_seq(seq))
    }

    #[cold]
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u64, A::Error> {
        self.wrong(Found.visit_map(map))
    }
}

/// `candidates`, `long`, `short`: an array of ids (`null`: absent).
struct IdsSeed;

impl<'de> FaultSeed<'de> for IdsSeed {
    type Value = Slot<Vec<u64>>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Self::Value, D::Error> {
        match d.deserialize_any(IdsVisitor { fault })? {
            Ok(ids) => Ok(ids.map(Ok)),
            Err(found) => Err(fault.raise(
                "",
                format!("expected an array of integer ids, found {found}"),
            )),
        }
    }
}

struct IdsVisitor<'f> {
    fault: &'f Fault,
}

impl<'de> Visitor<'de> for IdsVisitor<'_> {
    type Value = Result<Option<Vec<u64>>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of integer ids")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let fault = self.fault;
        let mut ids = Vec::new();
        loop {
            match seq.next_element_seed(IdSeed { fault }) {
                Ok(Some(id)) => ids.push(id),
                Ok(None) => return Ok(Ok(Some(ids))),
                Err(e) => {
                    if fault.is_raised() {
                        finish_seq(&mut seq, fault)?;
                    }
                    return Err(e);
                }
            }
        }
    }

    reject!(Found; bool i64 u64 f64 str map);
}

/// `fields`: an object of profile field name to id (`null`: absent), checked against the model
/// once read: every configured field, in config order (missing, not an id, outside its
/// vocabulary), then the first unknown name (in key order).
struct FieldsSeed<'c> {
    cfg: &'c HcnConfig,
}

impl<'de> FaultSeed<'de> for FieldsSeed<'_> {
    type Value = Slot<Vec<(String, u64)>>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Self::Value, D::Error> {
        match d.deserialize_any(FieldsVisitor { cfg: self.cfg })? {
            Ok(fields) => Ok(fields),
            Err(found) => Err(fault.raise(
                "",
                format!("expected an object of field name to id, found {found}"),
            )),
        }
    }
}

struct FieldsVisitor<'c> {
    cfg: &'c HcnConfig,
}

/// A key of `fields`: the index of the model's field of that name, or the unknown name.
struct FieldKey<'c> {
    cfg: &'c HcnConfig,
}

impl<'de> Visitor<'de> for FieldKey<'_> {
    type Value = Result<usize, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a profile field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .cfg
            .user_fields
            .iter()
            .position(|f| f.name == v)
            .ok_or_else(|| v.to_string()))
    }
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Result<Slot<Vec<(String, u64)>>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of field name to id")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let cfg = self.cfg;
        let mut ids = vec![None; cfg.user_fields.len()];
        let mut unknown: Option<String> = None;
        while let Some(key) = map.next_key_seed(AnyOf(FieldKey { cfg }))? {
            match key {
                Ok(i) => ids[i] = Some(map.next_value_seed(AnyOf(IdVisitor))?),
                Err(name) => {
                    map.next_value::<Skip>()?;
                    if unknown.as_ref().is_none_or(|u| name < *u) {
                        unknown = Some(name);
                    }
                }
            }
        }
        Ok(Ok(Some(check_fields(cfg, ids, unknown))))
    }

    reject!(Found; bool i64 u64 f64 str seq);
}

fn check_fields(
    cfg: &HcnConfig,
    ids: Vec<Option<Result<u64, String>>>,
    unknown: Option<String>,
) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::with_capacity(cfg.user_fields.len());
    for (f, id) in cfg.user_fields.iter().zip(ids) {
        let field = format!("fields.{}", f.name);
        let id = match id {
            Some(Ok(id)) => id,
            Some(Err(found)) => return Err(Error::request(field, id_reason(&found))),
            None => {
                return Err(Error::request(
                    field,
                    format!(
                        "missing (the model's profile fields are: {})",
                        field_names(cfg)
                    ),
                ))
            }
        };
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
    if let Some(unknown) = unknown {
        let known = if cfg.user_fields.is_empty() {
            "the model has no profile fields".to_string()
        } else {
            format!("the model's profile fields are: {}", field_names(cfg))
        };
        return Err(Error::request(
            format!("fields.{unknown}"),
            format!("unknown profile field ({known})"),
        ));
    }
    Ok(out)
}

/// `dense`: exactly `want` numbers (`null`: absent), each finite as an F32. A wrong length is
/// the error even when an element is wrong too.
struct DenseSeed {
    want: usize,
}

impl<'de> FaultSeed<'de> for DenseSeed {
    type Value = Slot<Vec<f32>>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Self::Value, D::Error> {
        let want = self.want;
        match d.deserialize_any(DenseVisitor { want, fault })? {
            Ok(dense) => Ok(dense),
            Err(found) => Err(fault.raise(
                "",
                format!("expected an array of {want} numbers, found {found}"),
            )),
        }
    }
}

struct DenseVisitor<'f> {
    want: usize,
    fault: &'f Fault,
}

fn dense_length_error(want: usize, found: usize) -> Error {
    Error::request(
        "dense",
        format!("expected {want} values (the model's user_dense), found {found}"),
    )
}

impl<'de> Visitor<'de> for DenseVisitor<'_> {
    type Value = Result<Slot<Vec<f32>>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (want, fault) = (self.want, self.fault);
        let mut dense = Vec::new();
        loop {
            match seq.next_element_seed(DenseElement { fault }) {
                Ok(Some(x)) => dense.push(x),
                Ok(None) => break,
                Err(e) if fault.is_raised() => {
                    let n = dense.len() + 1 + finish_seq(&mut seq, fault)?;
                    if n == want {
                        return Err(e);
                    }
                    fault.clear();
                    return Ok(Ok(Some(Err(dense_length_error(want, n)))));
                }
                Err(e) => return Err(e),
            }
        }
        if dense.len() != want {
            return Ok(Ok(Some(Err(dense_length_error(want, dense.len())))));
        }
        Ok(Ok(Some(Ok(dense))))
    }

    reject!(Found; bool i64 u64 f64 str map);
}

/// One `dense` value: a JSON number whose value is finite as an F32.
struct DenseElement<'f> {
    fault: &'f Fault,
}

/// A JSON number as `f64`. `Err`: what it is instead.
struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Result<f64, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Ok(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Ok(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Ok(v))
    }

    reject!(Found; bool str unit seq map);
}

impl<'de> DeserializeSeed<'de> for DenseElement<'_> {
    type Value = f32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f32, D::Error> {
        match d.deserialize_any(NumberVisitor)? {
            Ok(x) => {
                // serde_json never yields a non-finite f64, but a finite f64 such as 1e39
                // overflows f32.
                let x32 = x as f32;
                if x.is_finite() && x32.is_finite() {
                    Ok(x32)
                } else {
                    Err(self.fault.raise(
                        "",
                        format!(
                            "{} is not a finite F32 value (|x| must be below 3.4e38)",
                            Value::from(x)
                        ),
                    ))
                }
            }
            Err(found) => Err(self
                .fault
                .raise("", format!("expected a finite number, found {found}"))),
        }
    }
}

/// An `hcn eval` line: its `labels` (`None`: absent, `null`, or the line is not an object).
struct LabelsLine {
    candidates: usize,
}

impl<'de> Visitor<'de> for LabelsLine {
    type Value = Result<Slot<Vec<bool>>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut labels = None;
        while let Some(key) = map.next_key_seed(AnyOf(TopKeyIs("labels")))? {
            if key {
                labels = slot(map.next_value_seed(Keyed {
                    key: "labels",
                    track: true,
                    seed: LabelsSeed {
                        candidates: self.candidates,
                    },
                })?);
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(Ok(labels))
    }

    reject!(Found; bool i64 u64 f64 str unit seq);
}

/// Whether a key is the one named.
struct TopKeyIs(&'static str);

impl<'de> Visitor<'de> for TopKeyIs {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// `labels`: one 0/1 per candidate. A wrong length is the error even when a label is wrong too.
struct LabelsSeed {
    candidates: usize,
}

impl<'de> FaultSeed<'de> for LabelsSeed {
    type Value = Slot<Vec<bool>>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Self::Value, D::Error> {
        match d.deserialize_any(LabelsVisitor {
            candidates: self.candidates,
            fault,
        })? {
            Ok(labels) => Ok(labels),
            Err(found) => Err(fault.raise("", format!("expected an array of 0/1, found {found}"))),
        }
    }
}

struct LabelsVisitor<'f> {
    candidates: usize,
    fault: &'f Fault,
}

fn labels_length_error(candidates: usize, found: usize) -> Error {
    Error::request(
        "labels",
        format!("expected one label per candidate ({candidates}), found {found}"),
    )
}

impl<'de> Visitor<'de> for LabelsVisitor<'_> {
    type Value = Result<Slot<Vec<bool>>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of 0/1")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (want, fault) = (self.candidates, self.fault);
        let mut labels = Vec::new();
        loop {
            match seq.next_element_seed(LabelSeed { fault }) {
                Ok(Some(label)) => labels.push(label),
                Ok(None) => break,
                Err(e) if fault.is_raised() => {
                    let n = labels.len() + 1 + finish_seq(&mut seq, fault)?;
                    if n == want {
                        return Err(e);
                    }
                    fault.clear();
                    return Ok(Ok(Some(Err(labels_length_error(want, n)))));
                }
                Err(e) => return Err(e),
            }
        }
        if labels.len() != want {
            return Ok(Ok(Some(Err(labels_length_error(want, labels.len())))));
        }
        Ok(Ok(Some(Ok(labels))))
    }

    reject!(Found; bool i64 u64 f64 str map);
}

/// One label: `0`, `1`, `false` or `true`.
struct LabelSeed<'f> {
    fault: &'f Fault,
}

struct LabelVisitor;

impl<'de> Visitor<'de> for LabelVisitor {
    type Value = Result<bool, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("0 or 1")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Ok(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(v.to_string()),
        })
    }

    reject!(Found; i64 f64 str unit seq map);
}

impl<'de> DeserializeSeed<'de> for LabelSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        match d.deserialize_any(LabelVisitor)? {
            Ok(label) => Ok(label),
            Err(found) => Err(self
                .fault
                .raise("", format!("expected 0 or 1, found {found}"))),
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

    /// SPEC §7's keys are read in the same pass; to `parse_request` they are unknown (ignored).
    #[test]
    fn service_keys_are_read_with_the_request() {
        let c = bare();
        let line = r#"{"candidates": [4, 8], "top_k": 3, "emit_interests": true}"#;
        let (r, keys) = parse_service_request(line, &c).unwrap();
        assert_eq!(r, parse_request(line, &c).unwrap());
        assert_eq!(
            keys,
            ServiceKeys {
                top_k: Some(3),
                emit_interests: true
            }
        );
        let (_, keys) = parse_service_request(r#"{"candidates": [], "top_k": null}"#, &c).unwrap();
        assert_eq!(keys, ServiceKeys::default());
        // The last duplicate wins, as for every key.
        let (_, keys) =
            parse_service_request(r#"{"candidates": [], "top_k": "x", "top_k": 2}"#, &c).unwrap();
        assert_eq!(keys.top_k, Some(2));
        for (line, field, needle) in [
            (r#"{"candidates": [], "top_k": -1}"#, "top_k", "found -1"),
            (r#"{"candidates": [], "top_k": 1.5}"#, "top_k", "found 1.5"),
            (
                r#"{"candidates": [], "top_k": "3"}"#,
                "top_k",
                "found \"3\"",
            ),
            (
                r#"{"candidates": [], "emit_interests": 1}"#,
                "emit_interests",
                "found 1",
            ),
            // A wrong request comes first.
            (r#"{"candidates": [-1], "top_k": -1}"#, "candidates[0]", ""),
        ] {
            match parse_service_request(line, &c) {
                Err(Error::Request { field: f, reason }) => {
                    assert_eq!(f, field, "{line}: {reason}");
                    assert!(reason.contains(needle), "{line}: {reason}");
                }
                other => panic!("{line}: {other:?}"),
            }
            assert!(parse_request(line, &c).is_ok() || field == "candidates[0]");
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
