"""Independent re-check of the fixtures: SPEC §1 in plain numpy float64, straight from the equations.

Run: ``.venv/bin/python reference/check_numpy.py [DIR ...]`` (default: every case in tests/fixtures
and weights/). Shares no code with ``hcn.py``/``export.py``/``gen_fixtures.py``: it reads the
safetensors files with its own parser (BF16 widened by bit shifting; I8 store rows as
``scales[i] · q_i`` in float64, SPEC §3), applies SPEC §1.1/§3's request
rules, evaluates the model with explicit loops over heads and interests, and compares with
``expected.jsonl``. Exits non-zero on any mismatch beyond 1e-9 · (1 + |ref|) or in the discrete outputs.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-9


def read_safetensors(path):
    """Returns ({name: float64 or integer array}, metadata) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        buf = raw[base + a : base + b]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(buf, "<f4").astype(np.float64)
        elif dt == "F16":
            arr = np.frombuffer(buf, "<f2").astype(np.float64)
        elif dt == "BF16":
            # bf16 is the top half of an f32: widen exactly by shifting the bits up.
            arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
        elif dt == "I8":
            arr = np.frombuffer(buf, "i1")
        elif dt == "U64":
            arr = np.frombuffer(buf, "<u8")
        elif dt == "I64":
            arr = np.frombuffer(buf, "<i8")
        else:
            raise ValueError(f"{path}: {name}: unexpected dtype {dt}")
        out[name] = arr.reshape(shape)
    return out, meta


class Store:
    def __init__(self, path):
        t, _ = read_safetensors(path)
        self.vectors = t["vectors"]
        if "scales" in t:  # SPEC §3: an I8 row is exactly scales[i] · q_i (float64 is exact here)
            self.vectors = t["scales"][:, None] * self.vectors.astype(np.float64)
        ids = [int(x) for x in t["ids"]] if "ids" in t else list(range(self.vectors.shape[0]))
        self.row = {x: i for i, x in enumerate(ids)}


def softmax(v):
    m = np.max(v)
    e = np.exp(v - m)
    return e / e.sum()


class Model:
    def __init__(self, path):
        self.t, meta = read_safetensors(path)
        self.c = json.loads(meta["hcn.config"])
        c = self.c
        self.D, self.n, self.h, self.r = c["dim"], c["interests"], c["heads"], c["layers"]
        self.concat = c.get("co_interest_concat") or ["long_aligned", "short_aligned", "short_aligned"]
        self.fields = c.get("user_fields") or []
        self.dense = c.get("user_dense") or 0
        self.mode = c.get("score") or "softmax"

    def W(self, name):
        return self.t[name + ".weight"]

    def b(self, name):
        w = self.t[name + ".weight"]
        return self.t.get(name + ".bias", np.zeros(w.shape[0]))

    def lin(self, name, x):
        return x @ self.W(name).T + self.b(name)

    def tower(self, side, X):
        """F(X) of SPEC §1.2 with an explicit loop over heads."""
        d = self.D // self.h
        C = self.t[f"{side}.seeds"]
        Hs = []
        for l in range(self.r):
            p = f"{side}.layers.{l}"
            Q = self.lin(p + ".q", C)
            heads = []
            if len(X):
                K = self.lin(p + ".k", X)
                V = self.lin(p + ".v", X)
            for k in range(self.h):
                cols = slice(k * d, (k + 1) * d)
                head = np.zeros((self.n, d))
                if len(X):
                    for i in range(self.n):
                        a = softmax(K[:, cols] @ Q[i, cols] / np.sqrt(d))
                        head[i] = a @ V[:, cols]
                heads.append(head)
            H = self.lin(p + ".o", np.concatenate(heads, axis=1))
            Hs.append(H)
            C = H
        return self.lin(f"{side}.merge", np.concatenate(Hs, axis=1))

    def user(self, Xl, Xs, field_ids, dense):
        Lh = self.tower("long", Xl)
        Sh = self.tower("short", Xs)
        n = self.n
        E = np.array([[Lh[i] @ Sh[j] for j in range(n)] for i in range(n)])
        Lt = np.array([sum(softmax(E[i, :])[j] * Sh[j] for j in range(n)) for i in range(n)])
        St = np.array([sum(softmax(E[:, j])[i] * Lh[i] for i in range(n)) for j in range(n)])
        blocks = {"long": Lh, "short": Sh, "long_aligned": Lt, "short_aligned": St}
        Xt = self.lin("co_interest", np.concatenate([blocks[b] for b in self.concat], axis=1))
        if self.fields or self.dense:
            x = np.concatenate(
                [self.t[f"user.fields.{f['name']}.embedding"][field_ids[f["name"]]] for f in self.fields]
                + [np.asarray(dense, dtype=np.float64)]
            )
            m = 0
            while f"user.mlp.{m}.weight" in self.t:
                m += 1
            for i in range(m):
                x = self.lin(f"user.mlp.{i}", x)
                if i < m - 1:
                    x = np.maximum(x, 0)
            Xhat = x
        else:
            Xhat = np.zeros(self.D)
        return self.lin("fusion", np.concatenate([Xt, np.tile(Xhat, (n, 1))], axis=1))

    def score(self, XU, x):
        s = XU @ x
        if self.mode == "softmax":
            return float(softmax(s) @ s)
        if self.mode == "max":
            return float(s.max())
        return float(s.mean())


def run_request(model, tokens, cands, req, k):
    skipped = 0
    seqs = []
    for key, max_len in (("long", model.c["long_len"]), ("short", model.c["short_len"])):
        known = [x for x in req[key] if x in tokens.row]
        skipped += len(req[key]) - len(known)
        known = known[len(known) - max_len :] if len(known) > max_len else known
        if max_len == 0:
            known = []
        seqs.append(tokens.vectors[[tokens.row[x] for x in known]].reshape(len(known), model.D))
    XU = model.user(seqs[0], seqs[1], req.get("fields", {}), req.get("dense", []))
    scores = [model.score(XU, cands.vectors[cands.row[x]]) if x in cands.row else None for x in req["candidates"]]
    missing = [x for x in req["candidates"] if x not in cands.row]
    pos = [p for p, s in enumerate(scores) if s is not None]
    pos.sort(key=lambda p: (-scores[p], p))
    return XU, scores, missing, skipped, [(req["candidates"][p], scores[p]) for p in pos[:k]]


def check_dir(d, k_default=10):
    case_json = os.path.join(d, "case.json")
    if os.path.exists(case_json):
        with open(case_json) as f:
            case = json.load(f)
        files = {key: os.path.join(d, case[key]) for key in ("model", "tokens", "candidates")}
        k = case["top_k"]
    else:  # weights/
        files = {
            "model": os.path.join(d, "hcn-public.safetensors"),
            "tokens": os.path.join(d, "tokens.safetensors"),
            "candidates": os.path.join(d, "candidates.safetensors"),
        }
        k = k_default
    model = Model(files["model"])
    tokens = Store(files["tokens"])
    cands = Store(files["candidates"])
    with open(os.path.join(d, "requests.jsonl")) as f:
        reqs = [json.loads(line) for line in f]
    with open(os.path.join(d, "expected.jsonl")) as f:
        exps = [json.loads(line) for line in f]
    assert len(reqs) == len(exps), f"{d}: {len(reqs)} requests, {len(exps)} expected lines"
    max_abs = max_rel = 0.0
    problems = []
    for i, (req, exp) in enumerate(zip(reqs, exps)):
        XU, scores, missing, skipped, top = run_request(model, tokens, cands, req, k)
        ref_xu = np.array(exp["interests"])
        diff = np.abs(XU - ref_xu)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / (1 + np.abs(ref_xu))).max()))
        if [s is None for s in scores] != [s is None for s in exp["scores"]]:
            problems.append(f"request {i}: null positions differ")
        for a, b in zip(scores, exp["scores"]):
            if a is not None and b is not None:
                max_abs = max(max_abs, abs(a - b))
                max_rel = max(max_rel, abs(a - b) / (1 + abs(b)))
        if missing != exp["missing_candidates"]:
            problems.append(f"request {i}: missing_candidates differ")
        if skipped != exp["skipped_behaviors"]:
            problems.append(f"request {i}: skipped_behaviors {skipped} != {exp['skipped_behaviors']}")
        if [t[0] for t in top] != [t["id"] for t in exp["top_k"]]:
            problems.append(f"request {i}: top-k ids differ")
    if max_rel > TOL:
        problems.append(f"max relative difference {max_rel:.3g} > {TOL}")
    return len(reqs), max_abs, max_rel, problems


def main(argv=None) -> int:
    dirs = (argv if argv is not None else sys.argv[1:]) or (
        sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "*", ""))) + [os.path.join(ROOT, "weights", "")]
    )
    worst = 0.0
    bad = 0
    for d in dirs:
        n, max_abs, max_rel, problems = check_dir(d)
        worst = max(worst, max_abs)
        print(f"{os.path.basename(os.path.normpath(d))}: {n} requests, max |numpy - expected| = {max_abs:.3g} "
              f"(relative {max_rel:.3g}) {'OK' if not problems else 'FAIL'}")
        for p in problems:
            print("   ", p)
        bad += bool(problems)
    print(f"overall max abs difference {worst:.3g}; {bad} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
