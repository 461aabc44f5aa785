"""Writes the I8 parity fixtures of tests/fixtures/ (SPEC §3 quantized stores) from existing cases.

Each I8 case takes a generated case (``reference/gen_fixtures.py``), quantizes its token store,
its candidate store or both with the engine's own ``hcn quantize`` (the tool a user runs), and
recomputes ``expected.jsonl`` in float64 with the independent numpy reference of
``reference/check_numpy.py`` (SPEC §1 from the equations; an I8 row is ``scales[i] · q_i``, exact
in float64). The model is the source case's (``case.json`` points at it, ``../<source>/``), the
requests are copied. No torch needed. Run from the repository root after building the binary::

    cargo build --release
    .venv/bin/python reference/make_i8_fixtures.py [--hcn target/release/hcn] [--only NAME ...]

The engine's own f64 oracle (``CpuKernels::Reference``) is the second, independent check of these
expectations: ``tests/parity.rs`` runs it on every case. Deterministic: running it twice gives
identical bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_numpy import Model, Store, run_request  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

# (name, source case, which stores: "both" | "tokens" | "candidates", what it covers)
CASES = [
    ("tiny_f32_i8", "tiny_f32", "both",
     "D=10 n=3 softmax, both stores I8, no ids; one requested candidate row all zero (scale 0)"),
    ("tiny_f16_max_i8", "tiny_f16_max", "candidates",
     "max, I8 candidates + F16 tokens, U64 ids over the full range"),
    ("tiny_bf16_mean_i8", "tiny_bf16_mean", "tokens",
     "mean, I8 tokens + BF16 candidates, I64 ids"),
    ("tinier_mixed_onefile_i8", "tinier_mixed_onefile", "both",
     "D=6 n=2, one I8 store for tokens and candidates, U64 ids"),
    ("single_interest_f32_i8", "single_interest_f32", "both",
     "D=5 (prime, under one 16-value load) n=1, both I8"),
    ("tiny_f16_large_logits_i8", "tiny_f16_large_logits", "both",
     "scores beyond ±88 (softmax stability), both I8"),
    ("public_f16_i8", "public_f16", "both",
     "public D=48 n=8 softmax, both I8, U64 ids"),
    ("public_bf16_max_i8", "public_bf16_max", "candidates",
     "public max, I8 candidates + BF16 tokens, no ids"),
    ("public_f32_mean_i8", "public_f32_mean", "both",
     "public mean, both I8 (from F32 tokens and F16 candidates), I64 ids"),
]


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def zero_row(path, row):
    """Makes row `row` of an I8 store all zero with scale 0: what `hcn quantize` writes for an
    all-zero row."""
    n, h = header(path)
    with open(path, "r+b") as f:
        d = h["vectors"]["shape"][1]
        v0 = 8 + n + h["vectors"]["data_offsets"][0]
        s0 = 8 + n + h["scales"]["data_offsets"][0]
        f.seek(v0 + row * d)
        f.write(b"\0" * d)
        f.seek(s0 + 4 * row)
        f.write(struct.pack("<f", 0.0))


def quantize(hcn, src, dst):
    subprocess.run([hcn, "quantize", "--in", src, "--out", dst], check=True, stdout=subprocess.DEVNULL)


def make(hcn, name, source, which, what):
    sdir = os.path.join(FIX, source)
    with open(os.path.join(sdir, "case.json")) as f:
        case = json.load(f)
    d = os.path.join(FIX, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    src = {k: os.path.join(sdir, case[k]) for k in ("tokens", "candidates")}
    one_file = case["tokens"] == case["candidates"]
    files = {}
    if one_file:
        assert which == "both", f"{name}: a one-file store is quantized whole"
        quantize(hcn, src["tokens"], os.path.join(d, "store.safetensors"))
        files = {"tokens": "store.safetensors", "candidates": "store.safetensors"}
    else:
        for k in ("tokens", "candidates"):
            if which in ("both", k):
                quantize(hcn, src[k], os.path.join(d, f"{k}.safetensors"))
                files[k] = f"{k}.safetensors"
            else:
                files[k] = os.path.join("..", source, case[k])
    shutil.copy(os.path.join(sdir, "requests.jsonl"), os.path.join(d, "requests.jsonl"))
    with open(os.path.join(d, "requests.jsonl")) as f:
        reqs = [json.loads(line) for line in f]
    if name == "tiny_f32_i8":
        # The first request's first candidate (no ids: the id is the row number).
        zero_row(os.path.join(d, files["candidates"]), reqs[0]["candidates"][0])
    meta = {
        "description": f"{case['description']} — I8: {what} (derived by reference/make_i8_fixtures.py)",
        "model": os.path.join("..", source, case["model"]),
        "tokens": files["tokens"],
        "candidates": files["candidates"],
        "top_k": case["top_k"],
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    model = Model(os.path.join(d, meta["model"]))
    tokens = Store(os.path.join(d, meta["tokens"]))
    cands = Store(os.path.join(d, meta["candidates"]))
    lines = []
    for req in reqs:
        xu, scores, missing, skipped, top = run_request(model, tokens, cands, req, case["top_k"])
        lines.append(json.dumps({
            "interests": xu.tolist(),
            "scores": scores,
            "missing_candidates": missing,
            "skipped_behaviors": skipped,
            "top_k": [{"id": i, "score": s} for i, s in top],
        }))
    with open(os.path.join(d, "expected.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{name}: {len(reqs)} requests from {source} ({which} I8)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hcn", default=os.path.join(ROOT, "target", "release", "hcn"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    a = ap.parse_args(argv)
    for name, source, which, what in CASES:
        if a.only and name not in a.only:
            continue
        make(a.hcn, name, source, which, what)
    return 0


if __name__ == "__main__":
    sys.exit(main())
