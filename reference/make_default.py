"""Writes the default model and stores in ``weights/`` (public profile, SPEC §6), deterministically.

Run: ``.venv/bin/python reference/make_default.py [--out weights]``.

Files:
- ``hcn-public.safetensors``: D=48, n=8, h=4, r=4, ℓ=120/30, fields age(10)/gender(3)/city(50) +
  4 dense, MLP hidden [64], score softmax, F16. Randomly initialised (seeded) until a trained model
  replaces it; ``export.write_model`` is how a trained one is written.
- ``tokens.safetensors`` / ``candidates.safetensors``: 20,000 F16 rows each with U64 ids drawn at
  random below 10^12 (one item universe: both stores hold the same ids, different vectors).
- ``requests.jsonl``: 5 requests with full sequences and 1,000 distinct candidates each.
- ``expected.jsonl``: the float64 reference output for them (fixture format, top 10).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import write_model  # noqa: E402
from gen_fixtures import PUBLIC, ROOT, Store, evaluate, init_model, make_ids, profile_part, stored_model  # noqa: E402

SEED = 20260523
ROWS = 20_000
CANDIDATES = 1_000
TOP_K = 10

CONFIG = dict(
    PUBLIC,
    co_interest_concat=["long_aligned", "short_aligned", "short_aligned"],
    user_fields=[{"name": "age", "vocab": 10}, {"name": "gender", "vocab": 3}, {"name": "city", "vocab": 50}],
    user_dense=4,
    user_mlp_hidden=[64],
    score="softmax",
)
FIELD_WIDTHS = {"age": 8, "gender": 4, "city": 8}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the default public-profile model, stores and requests.")
    ap.add_argument("--out", default=os.path.join(ROOT, "weights"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(SEED)

    model = init_model(CONFIG, SEED, FIELD_WIDTHS)
    dtypes = {n: "f16" for n in model.state_dict()}
    write_model(model, os.path.join(a.out, "hcn-public.safetensors"), dtype=dtypes)
    ref = stored_model(model, dtypes)

    ids = make_ids(rng, ROWS, "u64small")
    dim = CONFIG["dim"]
    tokens = Store(rng.standard_normal((ROWS, dim)), "f16", ids)
    cands = Store(rng.standard_normal((ROWS, dim)), "f16", ids)
    tokens.write(os.path.join(a.out, "tokens.safetensors"))
    cands.write(os.path.join(a.out, "candidates.safetensors"))

    reqs, exps = [], []
    for i in range(5):
        history = [ids[j] for j in rng.integers(0, ROWS, size=CONFIG["long_len"])]
        if i % 2 == 0:
            short = history[-CONFIG["short_len"]:]  # the session is the most recent part of the history
        else:
            short = [ids[j] for j in rng.integers(0, ROWS, size=CONFIG["short_len"])]
        req = {"long": history, "short": short}
        req.update(profile_part(rng, CONFIG))
        req["candidates"] = [ids[j] for j in rng.choice(ROWS, size=CANDIDATES, replace=False)]
        reqs.append(req)
        exps.append(evaluate(ref, tokens, cands, req, TOP_K))
    with open(os.path.join(a.out, "requests.jsonl"), "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(a.out, "expected.jsonl"), "w") as f:
        for e in exps:
            f.write(json.dumps(e) + "\n")
    for name in sorted(os.listdir(a.out)):
        print(f"{name}: {os.path.getsize(os.path.join(a.out, name)) / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
