//! The model's `hcn.config` (SPEC §2): parsed from the safetensors `__metadata__`, validated, and
//! turned into the sizes every other module reads. Defaults are SPEC's: `co_interest_concat`
//! `[long_aligned, short_aligned, short_aligned]` (eq. 6), no user fields, no dense features, no hidden
//! MLP layers, `score: softmax`. Keys SPEC does not name are ignored (kept in `extra_keys` so
//! `hcn inspect` can show them).
//!
//! Read with typed serde, as requests are (src/json.rs): each key's value by its own seed under a
//! path tracker, so a message names the path at fault (`user_fields[1].vocab`). Every key is read
//! (the last of duplicates counting) before the checks run in a fixed order; the first failing one
//! is the error.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::json::{finish_seq, reject, AnyOf, Fault, FaultSeed, Keyed, Skip};

/// The metadata key that holds the config JSON.
pub const CONFIG_KEY: &str = "hcn.config";
/// The only format string this engine reads.
pub const FORMAT: &str = "hcn/1";

pub use crate::abi::{Block, ScoreMode};

impl Block {
    pub fn name(self) -> &'static str {
        match self {
            Block::Long => "long",
            Block::Short => "short",
            Block::LongAligned => "long_aligned",
            Block::ShortAligned => "short_aligned",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "long" => Block::Long,
            "short" => Block::Short,
            "long_aligned" => Block::LongAligned,
            "short_aligned" => Block::ShortAligned,
            _ => return None,
        })
    }
}

impl ScoreMode {
    pub fn name(self) -> &'static str {
        match self {
            ScoreMode::Softmax => "softmax",
            ScoreMode::Max => "max",
            ScoreMode::Mean => "mean",
        }
    }
}

/// One categorical profile field: its name and vocabulary size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserField {
    pub name: String,
    pub vocab: usize,
}

/// The validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HcnConfig {
    /// `D`.
    pub dim: usize,
    /// `n`.
    pub interests: usize,
    /// `h`; divides `dim`.
    pub heads: usize,
    /// `r`.
    pub layers: usize,
    /// `ℓ_L`.
    pub long_len: usize,
    /// `ℓ_S`.
    pub short_len: usize,
    pub co_interest_concat: Vec<Block>,
    pub user_fields: Vec<UserField>,
    pub user_dense: usize,
    pub user_mlp_hidden: Vec<usize>,
    pub score: ScoreMode,
    /// Keys present in the JSON that SPEC does not define (ignored).
    pub extra_keys: Vec<String>,
}

impl HcnConfig {
    /// `d = D / h`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// True when the model has a user profile (fields or dense features); otherwise `X̂ = 0`.
    pub fn has_profile(&self) -> bool {
        !self.user_fields.is_empty() || self.user_dense > 0
    }

    /// Parses and validates the JSON text of `hcn.config`. The error string says what is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        // As `serde_json::from_str`: the value, then nothing but whitespace. A wrong value is
        // caught below its key, so an `Err` here is a syntax error wherever it is.
        let raw = de
            .deserialize_any(ConfigVisitor)
            .and_then(|raw| de.end().map(|()| raw))
            .map_err(|e| format!("not valid JSON: {e}"))?;
        raw.map_err(|_| "must be a JSON object".to_string())?
            .check()
    }
}

/// A config value as read, or the message saying what is wrong with it.
type Checked<T> = Result<T, String>;

/// Every key's value as read (`None`: absent; also `null` where that means the default).
#[derive(Default)]
struct RawConfig {
    format: Option<Checked<()>>,
    dim: Option<Checked<usize>>,
    interests: Option<Checked<usize>>,
    heads: Option<Checked<usize>>,
    layers: Option<Checked<usize>>,
    long_len: Option<Checked<usize>>,
    short_len: Option<Checked<usize>>,
    co_interest_concat: Option<Checked<Vec<Block>>>,
    user_fields: Option<Checked<Vec<UserField>>>,
    user_dense: Option<Checked<usize>>,
    user_mlp_hidden: Option<Checked<Vec<usize>>>,
    score: Option<Checked<ScoreMode>>,
    extra_keys: BTreeSet<String>,
}

/// A key's value read by [`Keyed`], a fault turned into its message: "`path` reason".
fn checked<T>(read: Result<T, (String, String)>) -> Checked<T> {
    read.map_err(|(path, reason)| format!("`{path}` {reason}"))
}

impl RawConfig {
    /// The checks, in a fixed order.
    fn check(self) -> Result<HcnConfig, String> {
        match self.format {
            Some(format) => format?,
            None => return Err(format!("missing key `format` (expected \"{FORMAT}\")")),
        }
        let dim = positive(self.dim, "dim")?;
        let interests = positive(self.interests, "interests")?;
        let heads = positive(self.heads, "heads")?;
        let layers = positive(self.layers, "layers")?;
        let long_len = size(self.long_len, "long_len")?;
        let short_len = size(self.short_len, "short_len")?;
        if dim % heads != 0 {
            return Err(format!("`heads` ({heads}) must divide `dim` ({dim})"));
        }
        let co_interest_concat = self
            .co_interest_concat
            .transpose()?
            .unwrap_or_else(|| vec![Block::LongAligned, Block::ShortAligned, Block::ShortAligned]);
        let user_fields = self.user_fields.transpose()?.unwrap_or_default();
        let user_dense = self.user_dense.transpose()?.unwrap_or(0);
        let user_mlp_hidden = self.user_mlp_hidden.transpose()?.unwrap_or_default();
        let score = self.score.transpose()?.unwrap_or(ScoreMode::Softmax);
        Ok(HcnConfig {
            dim,
            interests,
            heads,
            layers,
            long_len,
            short_len,
            co_interest_concat,
            user_fields,
            user_dense,
            user_mlp_hidden,
            score,
            extra_keys: self.extra_keys.into_iter().collect(),
        })
    }
}

fn size(read: Option<Checked<usize>>, key: &str) -> Result<usize, String> {
    read.unwrap_or_else(|| Err(format!("missing key `{key}`")))
}

fn positive(read: Option<Checked<usize>>, key: &str) -> Result<usize, String> {
    let v = size(read, key)?;
    if v == 0 {
        return Err(format!("`{key}` must be positive, found 0"));
    }
    Ok(v)
}

/// A safety cap on any one size in the config, so a lying config cannot make us allocate absurdly.
const MAX_SIZE: u64 = 1 << 31;

/// `v` as a size, or the rest of the message after "`key` ".
fn to_usize(v: u64) -> Result<usize, String> {
    if v > MAX_SIZE {
        return Err(format!(
            "= {v} is larger than the supported maximum {MAX_SIZE}"
        ));
    }
    usize::try_from(v).map_err(|_| format!("= {v} does not fit this platform"))
}

/// The config object. `Err`: it is not an object.
struct ConfigVisitor;

impl<'de> Visitor<'de> for ConfigVisitor {
    type Value = Result<RawConfig, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawConfig::default();
        while let Some(key) = map.next_key::<String>()? {
            let k = key.as_str();
            // The value of `k`, read by `seed` (paths tracked), a fault made its message.
            macro_rules! read {
                ($seed:expr) => {
                    checked(map.next_value_seed(Keyed {
                        key: k,
                        seed: $seed,
                        track: true,
                    })?)
                };
            }
            match k {
                "format" => raw.format = Some(read!(FormatSeed)),
                "dim" => raw.dim = Some(read!(SizeSeed)),
                "interests" => raw.interests = Some(read!(SizeSeed)),
                "heads" => raw.heads = Some(read!(SizeSeed)),
                "layers" => raw.layers = Some(read!(SizeSeed)),
                "long_len" => raw.long_len = Some(read!(SizeSeed)),
                "short_len" => raw.short_len = Some(read!(SizeSeed)),
                "co_interest_concat" => raw.co_interest_concat = read!(List(Blocks)).transpose(),
                "user_fields" => raw.user_fields = read!(List(Fields)).transpose(),
                "user_dense" => raw.user_dense = read!(UserDenseSeed).transpose(),
                "user_mlp_hidden" => raw.user_mlp_hidden = read!(List(Hidden)).transpose(),
                "score" => raw.score = read!(ScoreSeed).transpose(),
                _ => {
                    map.next_value::<Skip>()?;
                    raw.extra_keys.insert(key);
                }
            }
        }
        Ok(Ok(raw))
    }

    reject!(Render; bool i64 u64 f64 str unit seq);
}

/// An offending value itself, as JSON, for a message (`found …`).
struct Render;

impl<'de> Visitor<'de> for Render {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map))
    }
}

/// A JSON integer in `0 ..= u64::MAX`. `Err`: the value, if it is anything else.
struct Count;

impl<'de> Visitor<'de> for Count {
    type Value = Result<u64, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Ok(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_err(|_| Value::from(v)))
    }

    reject!(Render; bool f64 str unit seq map);
}

/// A JSON string. `Err`: the value, if it is anything else.
struct Text;

impl<'de> Visitor<'de> for Text {
    type Value = Result<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(v.to_string()))
    }

    reject!(Render; bool i64 u64 f64 unit seq map);
}

/// `format`: the string [`FORMAT`].
struct FormatSeed;

impl<'de> FaultSeed<'de> for FormatSeed {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D, fault: &Fault) -> Result<(), D::Error> {
        match d.deserialize_any(Text)? {
            Ok(f) if f == FORMAT => Ok(()),
            Ok(f) => Err(fault.raise(
                "",
                format!("must be \"{FORMAT}\", found {}", Value::from(f)),
            )),
            Err(other) => Err(fault.raise("", format!("must be \"{FORMAT}\", found {other}"))),
        }
    }
}

/// A size: a non-negative integer up to [`MAX_SIZE`].
fn read_size<'de, D: Deserializer<'de>>(
    d: D,
    fault: &Fault,
) -> Result<Result<usize, Value>, D::Error> {
    match d.deserialize_any(Count)? {
        Ok(v) => to_usize(v)
            .map(Ok)
            .map_err(|reason| fault.raise("", reason)),
        Err(other) => Ok(Err(other)),
    }
}

fn not_a_size(other: &Value) -> String {
    format!("must be a non-negative integer, found {other}")
}

/// `dim`, `interests`, `heads`, `layers`, `long_len`, `short_len` (`null` is wrong).
struct SizeSeed;

impl<'de> FaultSeed<'de> for SizeSeed {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D, fault: &Fault) -> Result<usize, D::Error> {
        read_size(d, fault)?.map_err(|other| fault.raise("", not_a_size(&other)))
    }
}

/// `user_dense` (`null`: the default).
struct UserDenseSeed;

impl<'de> FaultSeed<'de> for UserDenseSeed {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Option<usize>, D::Error> {
        match read_size(d, fault)? {
            Ok(v) => Ok(Some(v)),
            Err(Value::Null) => Ok(None),
            Err(other) => Err(fault.raise("", not_a_size(&other))),
        }
    }
}

/// `score`: `softmax`, `max` or `mean` (`null`: the default).
struct ScoreSeed;

impl<'de> FaultSeed<'de> for ScoreSeed {
    type Value = Option<ScoreMode>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Option<ScoreMode>, D::Error> {
        match d.deserialize_any(Text)? {
            Ok(s) => match s.as_str() {
                "softmax" => Ok(Some(ScoreMode::Softmax)),
                "max" => Ok(Some(ScoreMode::Max)),
                "mean" => Ok(Some(ScoreMode::Mean)),
                _ => Err(fault.raise(
                    "",
                    format!("must be \"softmax\", \"max\" or \"mean\", found \"{s}\""),
                )),
            },
            Err(Value::Null) => Ok(None),
            Err(other) => Err(fault.raise("", format!("must be a string, found {other}"))),
        }
    }
}

/// A list (`null`: the default) of elements read by `E`, in order; the first wrong one is the
/// fault.
struct List<E>(E);

/// How the elements of a [`List`] are read.
trait Elements<'de>: Copy {
    type Value;

    /// The next element (`None`: the end), or what is wrong with it: `(sub, reason)`, raised
    /// about the whole list. An element may also raise its own fault (so its index is tracked).
    #[allow(clippy::type_complexity)]
    fn next<A: SeqAccess<'de>>(
        self,
        seq: &mut A,
        fault: &Fault,
        so_far: &[Self::Value],
    ) -> Result<Option<Result<Self::Value, (&'static str, String)>>, A::Error>;

    /// What is wrong with the whole list, once read.
    fn check(self, _all: &[Self::Value]) -> Result<(), String> {
        Ok(())
    }
}

impl<'de, E: Elements<'de>> FaultSeed<'de> for List<E> {
    type Value = Option<Vec<E::Value>>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
        fault: &Fault,
    ) -> Result<Self::Value, D::Error> {
        match d.deserialize_any(ListVisitor { of: self.0, fault })? {
            Ok(list) => Ok(list),
            Err(other) => Err(fault.raise("", format!("must be a list, found {other}"))),
        }
    }
}

struct ListVisitor<'f, L> {
    of: L,
    fault: &'f Fault,
}

impl<'de, L: Elements<'de>> Visitor<'de> for ListVisitor<'_, L> {
    type Value = Result<Option<Vec<L::Value>>, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let fault = self.fault;
        let mut all = Vec::new();
        loop {
            match self.of.next(&mut seq, fault, &all) {
                Ok(Some(Ok(v))) => all.push(v),
                Ok(Some(Err((sub, reason)))) => {
                    finish_seq(&mut seq, fault)?;
                    return Err(fault.raise(sub, reason));
                }
                Ok(None) => break,
                Err(e) => {
                    if fault.is_raised() {
                        finish_seq(&mut seq, fault)?;
                    }
                    return Err(e);
                }
            }
        }
        self.of
            .check(&all)
            .map_err(|reason| fault.raise("", reason))?;
        Ok(Ok(Some(all)))
    }

    reject!(Render; bool i64 u64 f64 str map);
}

/// `co_interest_concat`: block names, at least one.
#[derive(Clone, Copy)]
struct Blocks;

impl<'de> Elements<'de> for Blocks {
    type Value = Block;

    fn next<A: SeqAccess<'de>>(
        self,
        seq: &mut A,
        _: &Fault,
        _: &[Block],
    ) -> Result<Option<Result<Block, (&'static str, String)>>, A::Error> {
        Ok(seq.next_element_seed(AnyOf(Text))?.map(|name| {
            let block = match name {
                Ok(name) => Block::parse(&name).ok_or_else(|| Value::from(name)),
                Err(other) => Err(other),
            };
            block.map_err(|v| {
                (
                    "",
                    format!(
                        "entry {v} is not one of \"long\", \"short\", \"long_aligned\", \"short_aligned\""
                    ),
                )
            })
        }))
    }

    fn check(self, all: &[Block]) -> Result<(), String> {
        if all.is_empty() {
            return Err("must list at least one block".into());
        }
        Ok(())
    }
}

/// `user_mlp_hidden`: positive sizes.
#[derive(Clone, Copy)]
struct Hidden;

impl<'de> Elements<'de> for Hidden {
    type Value = usize;

    fn next<A: SeqAccess<'de>>(
        self,
        seq: &mut A,
        _: &Fault,
        _: &[usize],
    ) -> Result<Option<Result<usize, (&'static str, String)>>, A::Error> {
        let entry = |v: Value| ("", format!("entry {v} must be a positive integer"));
        Ok(seq
            .next_element_seed(AnyOf(Count))?
            .map(|width| match width {
                Ok(0) => Err(entry(Value::from(0))),
                Ok(v) => to_usize(v).map_err(|reason| ("", reason)),
                Err(other) => Err(entry(other)),
            }))
    }
}

/// `user_fields`: `{"name": …, "vocab": …}` objects, names distinct.
#[derive(Clone, Copy)]
struct Fields;

impl<'de> Elements<'de> for Fields {
    type Value = UserField;

    fn next<A: SeqAccess<'de>>(
        self,
        seq: &mut A,
        fault: &Fault,
        so_far: &[UserField],
    ) -> Result<Option<Result<UserField, (&'static str, String)>>, A::Error> {
        let Some((name, vocab)) = seq.next_element_seed(FieldSeed { fault })? else {
            return Ok(None);
        };
        if so_far.iter().any(|g| g.name == name) {
            return Ok(Some(Err(("", format!("names `{name}` twice")))));
        }
        Ok(Some(
            to_usize(vocab)
                .map(|vocab| UserField { name, vocab })
                .map_err(|reason| (".vocab", reason)),
        ))
    }
}

/// One `user_fields` entry; what is wrong with it is a fault raised there (its index tracked).
struct FieldSeed<'f> {
    fault: &'f Fault,
}

impl<'de> de::DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = (String, u64);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(String, u64), D::Error> {
        match d.deserialize_any(FieldVisitor)? {
            Ok(Ok(field)) => Ok(field),
            Ok(Err((sub, reason))) => Err(self.fault.raise(sub, reason.to_string())),
            Err(_) => Err(self
                .fault
                .raise("", "must be an object with `name` and `vocab`".into())),
        }
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    /// The name and vocabulary, what is wrong with them (`(sub, reason)`), or not an object.
    type Value = Result<Result<(String, u64), (&'static str, &'static str)>, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with `name` and `vocab`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut vocab) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => name = map.next_value_seed(AnyOf(Text))?.ok(),
                "vocab" => vocab = map.next_value_seed(AnyOf(Count))?.ok(),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        let Some(name) = name.filter(|n: &String| !n.is_empty()) else {
            return Ok(Ok(Err((".name", "must be a non-empty string"))));
        };
        let Some(vocab) = vocab.filter(|&v| v > 0) else {
            return Ok(Ok(Err((".vocab", "must be a positive integer"))));
        };
        Ok(Ok(Ok((name, vocab))))
    }

    reject!(Render; bool i64 u64 f64 str unit seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: &str = r#"{"format": "hcn/1", "dim": 48, "interests": 8, "heads": 4, "layers": 4,
        "long_len": 120, "short_len": 30,
        "co_interest_concat": ["long_aligned", "short_aligned", "short_aligned"],
        "user_fields": [{"name": "age", "vocab": 10}, {"name": "gender", "vocab": 3}],
        "user_dense": 4, "user_mlp_hidden": [64], "score": "softmax"}"#;

    #[test]
    fn parses_spec_example() {
        let c = HcnConfig::from_json(PUBLIC).unwrap();
        assert_eq!((c.dim, c.interests, c.heads, c.layers), (48, 8, 4, 4));
        assert_eq!((c.long_len, c.short_len, c.head_dim()), (120, 30, 12));
        assert_eq!(c.user_fields.len(), 2);
        assert_eq!(c.user_fields[1].vocab, 3);
        assert_eq!(c.user_mlp_hidden, vec![64]);
        assert_eq!(c.score, ScoreMode::Softmax);
        assert!(c.extra_keys.is_empty());
    }

    #[test]
    fn defaults_are_specs() {
        let c = HcnConfig::from_json(
            r#"{"format":"hcn/1","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2}"#,
        )
        .unwrap();
        assert_eq!(
            c.co_interest_concat,
            vec![Block::LongAligned, Block::ShortAligned, Block::ShortAligned]
        );
        assert!(!c.has_profile());
        assert_eq!(c.score, ScoreMode::Softmax);
    }

    #[test]
    fn rejects_inconsistent_configs_with_a_reason() {
        let cases = [
            (
                r#"{"format":"hcn/2","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2}"#,
                "format",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":2,"heads":3,"layers":1,"long_len":3,"short_len":2}"#,
                "divide",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":0,"heads":2,"layers":1,"long_len":3,"short_len":2}"#,
                "interests",
            ),
            (
                r#"{"format":"hcn/1","dim":-8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2}"#,
                "dim",
            ),
            (
                r#"{"format":"hcn/1","interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2}"#,
                "dim",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2,"score":"sum"}"#,
                "score",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2,"co_interest_concat":["left"]}"#,
                "co_interest_concat",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2,"co_interest_concat":[]}"#,
                "co_interest_concat",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2,"user_fields":[{"name":"a","vocab":0}]}"#,
                "vocab",
            ),
            (
                r#"{"format":"hcn/1","dim":8,"interests":2,"heads":2,"layers":1,"long_len":3,"short_len":2,"user_fields":[{"name":"a","vocab":2},{"name":"a","vocab":2}]}"#,
                "twice",
            ),
            (r#"{"format":"hcn/1","dim":8,"#, "JSON"),
            (r#"[1,2]"#, "object"),
        ];
        for (json, needle) in cases {
            let err = HcnConfig::from_json(json).unwrap_err();
            assert!(
                err.contains(needle),
                "{json}: error `{err}` should mention `{needle}`"
            );
        }
    }
}
