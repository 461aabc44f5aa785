"""Deterministic generator of the parity fixtures in ``tests/fixtures/<case>/``.

Run: ``.venv/bin/python reference/gen_fixtures.py [--out tests/fixtures] [--only CASE ...]``.

Every reference number is computed in float64 from the *stored* values: each weight and vector is
rounded to its storage dtype, widened back exactly, and the module is evaluated with ``.double()``
(SPEC §5). Request semantics follow SPEC §1.1/§3: unknown behavior ids are dropped first (and counted
in ``skipped_behaviors``), then a sequence keeps its most recent ``ℓ`` tokens; unknown candidates get
``null`` and are listed in ``missing_candidates`` (one entry per occurrence, request order); top-k
is the k largest ``y``, ties by lower candidate position, unknown candidates never enter it.
See ``tests/fixtures/README.md`` for the file format.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hcn import HCN  # noqa: E402
from export import quantize, write_model, write_store  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(dim=10, interests=3, heads=2, layers=2, long_len=7, short_len=3)  # d = 5: odd head width
TINIER = dict(dim=6, interests=2, heads=3, layers=1, long_len=4, short_len=1)  # d = 2, one layer, ℓ_S = 1
SINGLE = dict(dim=5, interests=1, heads=1, layers=3, long_len=5, short_len=2)  # n=1, h=1 (d=D), prime D
PUBLIC = dict(dim=48, interests=8, heads=4, layers=4, long_len=120, short_len=30)  # SPEC §6


# ----------------------------------------------------------------------------------------------
# Models and stores


def init_model(config: dict, seed: int, field_widths=None, bias_std: float = 0.2, fusion_gain: float = 1.0,
               deep_q_gain: float = 2.5) -> HCN:
    """A randomly initialised HCN with non-degenerate scales (seeds N(0,1), W ~ N(0, 1/fan_in)).

    Layers after the first take queries from H_{l-1}, which averages V and so is ~3x smaller than
    the seeds; their query weights get ``deep_q_gain`` so those softmaxes are not nearly uniform
    (a flat softmax would hide attention errors from the parity test).
    """
    rng = np.random.default_rng(seed)
    model = HCN(config, field_widths=field_widths)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".seeds") or name.endswith(".embedding"):
                v = rng.standard_normal(p.shape)
            elif name.endswith(".weight"):
                v = rng.standard_normal(p.shape) / math.sqrt(p.shape[1])
                if name == "fusion.weight":
                    v *= fusion_gain
                if ".layers." in name and name.endswith(".q.weight") and ".layers.0." not in name:
                    v *= deep_q_gain
            else:
                v = rng.standard_normal(p.shape) * bias_std
            p.copy_(torch.from_numpy(v))
    return model


def stored_model(model: HCN, dtypes: Dict[str, str]) -> HCN:
    """A float64 copy of ``model`` holding exactly the values the file stores."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(quantize(p, dtypes[name]))
    return m


@dataclass
class Store:
    """An item store as written (SPEC §3) plus its float64 stored values and an id index."""

    vectors: np.ndarray  # float64 values before rounding, [N, D]
    dtype: str
    ids: Optional[List[int]]  # None: ids are row numbers
    id_dtype: str = "u64"
    stored: torch.Tensor = field(init=False)
    index: Dict[int, int] = field(init=False)

    def __post_init__(self):
        self.stored = quantize(torch.from_numpy(self.vectors), self.dtype)
        n = self.vectors.shape[0]
        self.index = {i: i for i in range(n)} if self.ids is None else {x: r for r, x in enumerate(self.ids)}

    def all_ids(self) -> List[int]:
        return list(range(self.vectors.shape[0])) if self.ids is None else list(self.ids)

    def write(self, path: str):
        write_store(path, self.vectors, self.ids, dtype=self.dtype, id_dtype=self.id_dtype)


def make_ids(rng, n: int, kind: str) -> Optional[List[int]]:
    """Store ids: 'rows' (absent), 'u64' (random over the whole range, about a third ≥ 2^63),
    'u64small' (random below 10^12), 'i64' (random non-negative I64)."""
    if kind == "rows":
        return None
    out: set = set()
    res: List[int] = []
    while len(res) < n:
        if kind == "u64":
            x = int(rng.integers(0, 1 << 62)) * 4 + int(rng.integers(0, 4))  # full 64-bit range
            if len(res) < 3:  # the extremes of the range are awkward for parsers and hashers
                x = [(1 << 64) - 1, 1 << 63, 0][len(res)]
        elif kind == "u64small":
            x = int(rng.integers(1, 10**12))
        elif kind == "i64":
            x = int(rng.integers(0, (1 << 63) - 1))
            if len(res) == 0:
                x = (1 << 63) - 1
        else:
            raise ValueError(kind)
        if x not in out:
            out.add(x)
            res.append(x)
    return res


def unknown_id(rng, store: Store) -> int:
    """An id that the store does not hold (sometimes ≥ 2^63 to test the full u64 range)."""
    while True:
        if rng.random() < 0.5:
            x = int(rng.integers(0, 1 << 62)) * 4 + 3
        else:
            x = int(rng.integers(0, max(4 * len(store.index), 10)))
        if x not in store.index:
            return x


# ----------------------------------------------------------------------------------------------
# Reference evaluation of one request (SPEC §1.1, §1.5, §3)


def resolve(seq: List[int], store: Store, max_len: int):
    """Drops unknown ids first, then keeps the most recent ``max_len``; returns (rows, skipped)."""
    rows = [store.index[x] for x in seq if x in store.index]
    skipped = len(seq) - len(rows)
    if len(rows) > max_len:
        rows = rows[len(rows) - max_len:]
    if max_len == 0:
        rows = []
    return rows, skipped


def padded(store: Store, rows: List[int], dim: int):
    """[1, max(len,1), D] vectors and [1, max(len,1)] mask (a padded dummy row when empty)."""
    length = max(len(rows), 1)
    x = torch.zeros(1, length, dim, dtype=torch.float64)
    mask = torch.zeros(1, length, dtype=torch.bool)
    if rows:
        x[0, : len(rows)] = store.stored[rows]
        mask[0, : len(rows)] = True
    return x, mask


def evaluate(model: HCN, tokens: Store, cands: Store, req: dict, top_k: int) -> dict:
    c = model.config
    dim = c["dim"]
    long_rows, sk_l = resolve(req["long"], tokens, c["long_len"])
    short_rows, sk_s = resolve(req["short"], tokens, c["short_len"])
    lx, lm = padded(tokens, long_rows, dim)
    sx, sm = padded(tokens, short_rows, dim)
    fields = {f["name"]: torch.tensor([req["fields"][f["name"]]]) for f in c["user_fields"]}
    dense = torch.tensor([req["dense"]], dtype=torch.float64) if c["user_dense"] else None
    with torch.no_grad():
        xu = model.user_interests(lx, lm, sx, sm, fields, dense)
        present = [(p, cands.index[x]) for p, x in enumerate(req["candidates"]) if x in cands.index]
        scores: List[Optional[float]] = [None] * len(req["candidates"])
        if present:
            y = model.score(xu, cands.stored[[r for _, r in present]].unsqueeze(0))[0]
            for (p, _), v in zip(present, y.tolist()):
                scores[p] = v
    missing = [x for x in req["candidates"] if x not in cands.index]
    order = sorted((p for p, s in enumerate(scores) if s is not None), key=lambda p: (-scores[p], p))
    top = [{"id": req["candidates"][p], "score": scores[p]} for p in order[:top_k]]
    return {
        "interests": xu[0].tolist(),
        "scores": scores,
        "missing_candidates": missing,
        "skipped_behaviors": sk_l + sk_s,
        "top_k": top,
    }


def near_tie(exp: dict, req: dict, top_k: int, rel: float = 2e-3) -> bool:
    """True when two different candidate ids near the top-k boundary score within ``rel``.

    Exactly equal scores are allowed: they come only from degenerate inputs (e.g. X^U = 0 when both
    sequences are empty and every bias is absent), where the order is the tie rule's, by position.
    """
    pairs = [(s, req["candidates"][p]) for p, s in enumerate(exp["scores"]) if s is not None]
    pairs.sort(key=lambda t: -t[0])
    pairs = pairs[: top_k + 1]
    for (a, ia), (b, ib) in zip(pairs, pairs[1:]):
        if ia != ib and 0 < abs(a - b) <= rel * (1 + abs(a)):
            return True
    return False


# ----------------------------------------------------------------------------------------------
# Requests


def profile_part(rng, config: dict) -> dict:
    out = {}
    if config.get("user_fields"):
        out["fields"] = {f["name"]: int(rng.integers(0, f["vocab"])) for f in config["user_fields"]}
    if config.get("user_dense"):
        # Multiples of 1/64: exact in f32 and f64, so the engine's f32 parse loses nothing.
        out["dense"] = [float(v) for v in np.round(rng.standard_normal(config["user_dense"]) * 64) / 64]
    return out


def pick(rng, ids: List[int], n: int) -> List[int]:
    return [ids[i] for i in rng.integers(0, len(ids), size=n)]


def make_request(kind: str, rng, config: dict, tokens: Store, cands: Store, n_cand: int) -> dict:
    """One request of a named scenario; sequences are oldest first, as in SPEC §4."""
    tok = tokens.all_ids()
    ll, ls = config["long_len"], config["short_len"]
    long_ = pick(rng, tok, max(1, ll * 2 // 3))
    short = pick(rng, tok, max(1, ls - 1) if ls > 1 else 1)
    candidates = pick(rng, cands.all_ids(), n_cand)
    if kind == "normal":
        pass
    elif kind == "full":
        long_, short = pick(rng, tok, ll), pick(rng, tok, ls)
    elif kind == "empty_long":
        long_ = []
    elif kind == "empty_short":
        short = []
    elif kind == "both_empty":
        long_, short = [], []
    elif kind == "overlong":
        long_, short = pick(rng, tok, ll + 5), pick(rng, tok, ls + 3)
    elif kind == "all_unknown_long":
        # Every behavior unknown: the sequence is empty after dropping (SPEC §1.2's rule).
        long_ = [unknown_id(rng, tokens) for _ in range(3)]
    elif kind == "unknown_interleaved":
        # Known tokens exceed ℓ by 2 and unknown ids sit among the most recent ones, so truncating
        # before dropping would keep fewer (and different) tokens than dropping first.
        long_ = pick(rng, tok, ll + 2)
        for k in range(4):
            pos = len(long_) - 1 - 2 * k
            long_.insert(max(pos, 0), unknown_id(rng, tokens))
        short = pick(rng, tok, ls + 1)
        short.insert(len(short) - 1, unknown_id(rng, tokens))
        short.append(unknown_id(rng, tokens))
    elif kind == "unknown_fits":
        # Longer than ℓ only because of unknown ids: after dropping them nothing is truncated.
        long_ = pick(rng, tok, ll)
        for _ in range(3):
            long_.insert(int(rng.integers(0, len(long_) + 1)), unknown_id(rng, tokens))
    elif kind == "candidates_missing_dup":
        # Unknown candidates (one repeated) and duplicated known candidates.
        u = unknown_id(rng, cands)
        candidates[1] = u
        candidates.insert(4, u)
        candidates.append(unknown_id(rng, cands))
        candidates.insert(2, candidates[0])
        candidates.append(candidates[3])
    elif kind == "all_candidates_missing":
        candidates = [unknown_id(rng, cands) for _ in range(3)]
    elif kind == "no_candidates":
        candidates = []
    else:
        raise ValueError(kind)
    req = {"long": long_, "short": short}
    req.update(profile_part(rng, config))
    req["candidates"] = candidates
    return req


# ----------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    name: str
    description: str
    config: dict
    model_dtype: object  # str or {name: dtype}
    token_rows: int
    token_dtype: str
    token_ids: str
    cand_rows: int = 0
    cand_dtype: str = "f16"
    cand_ids: str = "rows"
    one_file: bool = False
    field_widths: Optional[dict] = None
    drop_biases: List[str] = field(default_factory=list)
    requests: List[str] = field(default_factory=list)
    n_cand: int = 12
    top_k: int = 5
    fusion_gain: float = 1.0


TINY_REQUESTS = [
    "normal",
    "empty_long",
    "empty_short",
    "both_empty",
    "overlong",
    "unknown_interleaved",
    "candidates_missing_dup",
    "all_unknown_long",
]


def mixed_dtypes(model: HCN) -> Dict[str, str]:
    """A per-tensor dtype mix: cycles f32 / f16 / bf16 over the tensors in name order."""
    names = sorted(model.state_dict())
    cycle = ["f32", "f16", "bf16"]
    return {n: cycle[i % 3] for i, n in enumerate(names)}


def cases() -> List[Case]:
    return [
        Case(
            name="tiny_f32",
            description="tiny profile (D=10, n=3, h=2 so d=5, r=2, ℓ=7/3); F32 model and stores, separate files, "
            "no ids (row numbers); default concat; two fields + 3 dense, MLP hidden [16, 8]; softmax; "
            "empty/over-long sequences, unknown behaviors (interleaved), unknown + duplicate candidates",
            config=dict(TINY, user_fields=[{"name": "age", "vocab": 5}, {"name": "city", "vocab": 7}], user_dense=3,
                        user_mlp_hidden=[16, 8], score="softmax"),
            model_dtype="f32", field_widths={"age": 3, "city": 4},
            token_rows=40, token_dtype="f32", token_ids="rows",
            cand_rows=30, cand_dtype="f32", cand_ids="rows",
            requests=TINY_REQUESTS,
        ),
        Case(
            name="tiny_f16_max",
            description="tiny profile; F16 model and stores; U64 ids spanning the whole range (0, 2^63, 2^64-1, many ≥ 2^63); "
            "concat [long, short]; one field only, MLP hidden []; score max",
            config=dict(TINY, co_interest_concat=["long", "short"], user_fields=[{"name": "age", "vocab": 4}],
                        user_mlp_hidden=[], score="max"),
            model_dtype="f16", field_widths={"age": 2},
            token_rows=50, token_dtype="f16", token_ids="u64",
            cand_rows=40, cand_dtype="f16", cand_ids="u64",
            requests=["normal", "overlong", "unknown_interleaved", "candidates_missing_dup", "empty_long", "unknown_fits"],
        ),
        Case(
            name="tiny_bf16_mean",
            description="tiny profile; BF16 model and stores; I64 ids; concat [long_aligned, short_aligned, long, short]; "
            "dense only (5), MLP hidden [16, 8]; score mean; some biases absent (zero)",
            config=dict(TINY, co_interest_concat=["long_aligned", "short_aligned", "long", "short"], user_dense=5,
                        user_mlp_hidden=[16, 8], score="mean"),
            model_dtype="bf16",
            token_rows=40, token_dtype="bf16", token_ids="i64",
            cand_rows=35, cand_dtype="bf16", cand_ids="i64",
            drop_biases=["long.layers.0.k.bias", "long.layers.1.o.bias", "short.merge.bias", "co_interest.bias",
                         "user.mlp.1.bias", "fusion.bias"],
            requests=["normal", "both_empty", "empty_short", "overlong", "candidates_missing_dup", "all_candidates_missing"],
        ),
        Case(
            name="tinier_mixed_onefile",
            description="D=6, n=2, h=3 (d=2), r=1, ℓ=4/1; per-tensor mixed dtypes (F32/F16/BF16); no profile (X̂ = 0, "
            "no user tensors); concat [short_aligned]; softmax; tokens and candidates are one F16 file with U64 ids; "
            "every bias absent",
            config=dict(TINIER, co_interest_concat=["short_aligned"], score="softmax"),
            model_dtype="mixed",
            token_rows=30, token_dtype="f16", token_ids="u64", one_file=True,
            drop_biases=["*"],
            requests=["normal", "overlong", "unknown_interleaved", "both_empty", "candidates_missing_dup", "no_candidates"],
            n_cand=10, top_k=4,
        ),
        Case(
            name="public_f16",
            description="public profile (SPEC §6: D=48, n=8, h=4, r=4, ℓ=120/30); F16 model and stores (1600 rows each, "
            "U64 random ids); default concat; fields age(10)/gender(3)/city(50) + 4 dense, MLP hidden [64]; softmax",
            config=dict(PUBLIC, user_fields=[{"name": "age", "vocab": 10}, {"name": "gender", "vocab": 3},
                                             {"name": "city", "vocab": 50}], user_dense=4, user_mlp_hidden=[64],
                        score="softmax"),
            model_dtype="f16", field_widths={"age": 8, "gender": 4, "city": 8},
            token_rows=1600, token_dtype="f16", token_ids="u64",
            cand_rows=1600, cand_dtype="f16", cand_ids="u64",
            requests=["full", "overlong", "unknown_interleaved", "empty_short", "candidates_missing_dup"],
            n_cand=200, top_k=20,
        ),
        Case(
            name="public_bf16_max",
            description="public profile; BF16 model and stores (1200 rows each, no ids); concat [long_aligned, "
            "short_aligned, long, short]; fields only (age, gender), MLP hidden []; score max",
            config=dict(PUBLIC, co_interest_concat=["long_aligned", "short_aligned", "long", "short"],
                        user_fields=[{"name": "age", "vocab": 10}, {"name": "gender", "vocab": 3}], score="max"),
            model_dtype="bf16", field_widths={"age": 6, "gender": 3},
            token_rows=1200, token_dtype="bf16", token_ids="rows",
            cand_rows=1200, cand_dtype="bf16", cand_ids="rows",
            requests=["full", "normal", "empty_long", "unknown_fits"],
            n_cand=150, top_k=20,
        ),
        Case(
            name="public_f32_mean",
            description="public profile; F32 model, F32 token store (800 rows, I64 ids), F16 candidate store (800 rows, "
            "I64 ids); concat [long, short]; dense only (4), MLP hidden [16, 8]; score mean; some biases absent",
            config=dict(PUBLIC, co_interest_concat=["long", "short"], user_dense=4, user_mlp_hidden=[16, 8],
                        score="mean"),
            model_dtype="f32",
            token_rows=800, token_dtype="f32", token_ids="i64",
            cand_rows=800, cand_dtype="f16", cand_ids="i64",
            drop_biases=["long.layers.2.q.bias", "short.layers.0.v.bias", "user.mlp.0.bias", "fusion.bias"],
            requests=["full", "overlong", "both_empty", "candidates_missing_dup"],
            n_cand=150, top_k=20,
        ),
        Case(
            name="single_interest_f32",
            description="D=5 (prime), n=1, h=1 (d=D), r=3, ℓ=5/2; F32 model, BF16 stores with U64 ids; concat "
            "[long, short_aligned]; one field (vocab 2) + 2 dense, MLP hidden [3]; softmax (with n=1, y = s)",
            config=dict(SINGLE, co_interest_concat=["long", "short_aligned"], user_fields=[{"name": "segment", "vocab": 2}],
                        user_dense=2, user_mlp_hidden=[3], score="softmax"),
            model_dtype="f32", field_widths={"segment": 1},
            token_rows=25, token_dtype="bf16", token_ids="u64",
            cand_rows=25, cand_dtype="bf16", cand_ids="u64",
            requests=["normal", "overlong", "unknown_interleaved", "empty_short", "both_empty", "candidates_missing_dup"],
            n_cand=10, top_k=4,
        ),
        Case(
            name="tiny_f16_large_logits",
            description="tiny profile; F16 model, F32 stores (no ids); fusion weights scaled ×14 so scores exceed ±88 "
            "(a softmax over s must subtract its max; exp(100) overflows f32); default concat; dense only (3), MLP "
            "hidden []; softmax",
            config=dict(TINY, user_dense=3, score="softmax"),
            model_dtype="f16", fusion_gain=14.0,
            token_rows=30, token_dtype="f32", token_ids="rows",
            cand_rows=30, cand_dtype="f32", cand_ids="rows",
            requests=["normal", "full", "overlong", "empty_long", "candidates_missing_dup"],
        ),
        Case(
            name="public_mixed_mean",
            description="public profile; per-tensor mixed F32/F16/BF16 model; F16 token store and BF16 candidate store "
            "(700 rows each, U64 ids); concat [short_aligned, long_aligned] (not the default order); fields age(10)/"
            "gender(3) + 4 dense, MLP hidden [32, 16]; score mean",
            config=dict(PUBLIC, co_interest_concat=["short_aligned", "long_aligned"],
                        user_fields=[{"name": "age", "vocab": 10}, {"name": "gender", "vocab": 3}], user_dense=4,
                        user_mlp_hidden=[32, 16], score="mean"),
            model_dtype="mixed", field_widths={"age": 5, "gender": 2},
            token_rows=700, token_dtype="f16", token_ids="u64",
            cand_rows=700, cand_dtype="bf16", cand_ids="u64",
            requests=["full", "unknown_interleaved", "unknown_fits", "empty_long"],
            n_cand=150, top_k=20,
        ),
        Case(
            name="public_f16_noprofile_onefile",
            description="public profile; F16 model without user profile (X̂ = 0, no user tensors); tokens and "
            "candidates one F16 file (1000 rows, no ids); default concat; softmax",
            config=dict(PUBLIC, score="softmax"),
            model_dtype="f16",
            token_rows=1000, token_dtype="f16", token_ids="rows", one_file=True,
            requests=["full", "overlong", "both_empty", "all_unknown_long", "candidates_missing_dup"],
            n_cand=150, top_k=20,
        ),
    ]


def build_case(case: Case, out_dir: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    model = init_model(case.config, seed, case.field_widths, fusion_gain=case.fusion_gain)
    names = list(model.state_dict())
    if case.drop_biases == ["*"]:
        drop = [n for n in names if n.endswith(".bias")]
    else:
        drop = case.drop_biases
    with torch.no_grad():
        sd = model.state_dict()
        for n in drop:
            sd[n].zero_()
    if case.model_dtype == "mixed":
        dtypes = mixed_dtypes(model)
    else:
        dtypes = {n: case.model_dtype for n in names}
    ref = stored_model(model, dtypes)
    dim = case.config["dim"]
    tokens = Store(rng.standard_normal((case.token_rows, dim)), case.token_dtype,
                   make_ids(rng, case.token_rows, case.token_ids),
                   "i64" if case.token_ids == "i64" else "u64")
    if case.one_file:
        cands = tokens
    else:
        cands = Store(rng.standard_normal((case.cand_rows, dim)), case.cand_dtype,
                      make_ids(rng, case.cand_rows, case.cand_ids),
                      "i64" if case.cand_ids == "i64" else "u64")

    d = os.path.join(out_dir, case.name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    write_model(model, os.path.join(d, "model.safetensors"), dtype=dtypes, drop_biases=drop)
    tokens.write(os.path.join(d, "tokens.safetensors"))
    if not case.one_file:
        cands.write(os.path.join(d, "candidates.safetensors"))
    meta = {
        "description": case.description,
        "model": "model.safetensors",
        "tokens": "tokens.safetensors",
        "candidates": "tokens.safetensors" if case.one_file else "candidates.safetensors",
        "top_k": case.top_k,
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")

    reqs, exps = [], []
    for kind in case.requests:
        for attempt in range(100):
            req = make_request(kind, rng, ref.config, tokens, cands, case.n_cand)
            exp = evaluate(ref, tokens, cands, req, case.top_k)
            if not near_tie(exp, req, case.top_k):
                break
        else:
            raise RuntimeError(f"{case.name}/{kind}: could not avoid near-tied scores")
        reqs.append(req)
        exps.append(exp)
    with open(os.path.join(d, "requests.jsonl"), "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(d, "expected.jsonl"), "w") as f:
        for e in exps:
            f.write(json.dumps(e) + "\n")
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    return {"case": case.name, "requests": len(reqs), "bytes": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    for case in cases():
        if a.only and case.name not in a.only:
            continue
        # The seed depends on the case name only, so adding or reordering cases changes nothing else.
        info = build_case(case, a.out, seed=zlib.crc32(case.name.encode()))
        print(f"{info['case']}: {info['requests']} requests, {info['bytes'] / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
