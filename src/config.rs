//! The model's `hcn.config` (SPEC §2): parsed from the safetensors `__metadata__`, validated, and
//! turned into the sizes every other module reads. Defaults are SPEC's: `co_interest_concat`
//! `[long_aligned, short_aligned, short_aligned]` (eq. 6), no user fields, no dense features, no hidden
//! MLP layers, `score: softmax`. Keys SPEC does not name are ignored (kept in `extra_keys` so
//! `hcn inspect` can show them).

use serde_json::{Map, Value};

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
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| "must be a JSON object".to_string())?;
        Self::from_object(obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, String> {
        match obj.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            Some(other) => return Err(format!("`format` must be \"{FORMAT}\", found {other}")),
            None => return Err(format!("missing key `format` (expected \"{FORMAT}\")")),
        }
        let dim = positive(obj, "dim")?;
        let interests = positive(obj, "interests")?;
        let heads = positive(obj, "heads")?;
        let layers = positive(obj, "layers")?;
        let long_len = size(obj, "long_len")?;
        let short_len = size(obj, "short_len")?;
        if dim % heads != 0 {
            return Err(format!("`heads` ({heads}) must divide `dim` ({dim})"));
        }

        let co_interest_concat = match obj.get("co_interest_concat") {
            None | Some(Value::Null) => {
                vec![Block::LongAligned, Block::ShortAligned, Block::ShortAligned]
            }
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err("`co_interest_concat` must list at least one block".into());
                }
                items
                    .iter()
                    .map(|v| {
                        v.as_str().and_then(Block::parse).ok_or_else(|| {
                            format!(
                                "`co_interest_concat` entry {v} is not one of \"long\", \"short\", \"long_aligned\", \"short_aligned\""
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(other) => {
                return Err(format!(
                    "`co_interest_concat` must be a list, found {other}"
                ))
            }
        };

        let user_fields = match obj.get("user_fields") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut fields: Vec<UserField> = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let f = item.as_object().ok_or_else(|| {
                        format!("`user_fields[{i}]` must be an object with `name` and `vocab`")
                    })?;
                    let name = f
                        .get("name")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            format!("`user_fields[{i}].name` must be a non-empty string")
                        })?
                        .to_string();
                    let vocab = f
                        .get("vocab")
                        .and_then(Value::as_u64)
                        .filter(|&v| v > 0)
                        .ok_or_else(|| {
                            format!("`user_fields[{i}].vocab` must be a positive integer")
                        })?;
                    if fields.iter().any(|g| g.name == name) {
                        return Err(format!("`user_fields` names `{name}` twice"));
                    }
                    fields.push(UserField {
                        name,
                        vocab: to_usize(vocab, "user_fields.vocab")?,
                    });
                }
                fields
            }
            Some(other) => return Err(format!("`user_fields` must be a list, found {other}")),
        };

        let user_dense = match obj.get("user_dense") {
            None | Some(Value::Null) => 0,
            Some(_) => size(obj, "user_dense")?,
        };
        let user_mlp_hidden = match obj.get("user_mlp_hidden") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&x| x > 0)
                        .ok_or_else(|| {
                            format!("`user_mlp_hidden` entry {v} must be a positive integer")
                        })
                        .and_then(|x| to_usize(x, "user_mlp_hidden"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => return Err(format!("`user_mlp_hidden` must be a list, found {other}")),
        };
        let score = match obj.get("score") {
            None | Some(Value::Null) => ScoreMode::Softmax,
            Some(Value::String(s)) => match s.as_str() {
                "softmax" => ScoreMode::Softmax,
                "max" => ScoreMode::Max,
                "mean" => ScoreMode::Mean,
                _ => {
                    return Err(format!(
                        "`score` must be \"softmax\", \"max\" or \"mean\", found \"{s}\""
                    ))
                }
            },
            Some(other) => return Err(format!("`score` must be a string, found {other}")),
        };

        const KNOWN: [&str; 12] = [
            "format",
            "dim",
            "interests",
            "heads",
            "layers",
            "long_len",
            "short_len",
            "co_interest_concat",
            "user_fields",
            "user_dense",
            "user_mlp_hidden",
            "score",
        ];
        let extra_keys = obj
            .keys()
            .filter(|k| !KNOWN.contains(&k.as_str()))
            .cloned()
            .collect();

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
            extra_keys,
        })
    }
}

/// A safety cap on any one size in the config, so a lying config cannot make us allocate absurdly.
const MAX_SIZE: u64 = 1 << 31;

fn to_usize(v: u64, key: &str) -> Result<usize, String> {
    if v > MAX_SIZE {
        return Err(format!(
            "`{key}` = {v} is larger than the supported maximum {MAX_SIZE}"
        ));
    }
    usize::try_from(v).map_err(|_| format!("`{key}` = {v} does not fit this platform"))
}

fn size(obj: &Map<String, Value>, key: &str) -> Result<usize, String> {
    match obj.get(key) {
        None => Err(format!("missing key `{key}`")),
        Some(v) => match v.as_u64() {
            Some(x) => to_usize(x, key),
            None => Err(format!("`{key}` must be a non-negative integer, found {v}")),
        },
    }
}

fn positive(obj: &Map<String, Value>, key: &str) -> Result<usize, String> {
    let v = size(obj, key)?;
    if v == 0 {
        return Err(format!("`{key}` must be positive, found 0"));
    }
    Ok(v)
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
