"""Writes a randomly initialised benchmark model and its item stores for a SPEC §6 profile.

Run: ``python reference/make_bench_model.py --profile public --rows 1000000 --dtype f16 --out DIR``.

Files in ``DIR``:
- ``model.safetensors``: the profile's shape (SPEC §6) with fields age(10)/gender(3)/city(100),
  8 dense features, MLP hidden [128], score softmax; weights initialised like the parity fixtures
  (``gen_fixtures.init_model``, seeded), stored as ``--model-dtype`` (F32 by default: the engine
  computes in F32 whatever the storage, so this changes nothing but the file size).
- ``tokens.safetensors`` / ``candidates.safetensors``: ``--rows`` N(0, 1) rows of width D, stored as
  ``--dtype``. Without ``--ids`` they have no ``ids`` tensor (the id is the row number, SPEC §3);
  ``--ids random`` writes unique random U64 ids, so the engine's hash index is exercised.

Timings only need shapes, so the weights are random; the files are large (1M × 128 F16 = 256 MB per
store) and belong in a scratch directory (``scripts/bench.sh`` uses ``target/bench-models/``), never
in git.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import write_model, write_store  # noqa: E402
from gen_fixtures import init_model  # noqa: E402

# SPEC §6. The profile part (fields, dense, MLP) is not fixed by SPEC; this one is the benchmark's.
PROFILES = {
    "public": dict(dim=48, interests=8, heads=4, layers=4, long_len=120, short_len=30),
    "industrial": dict(dim=128, interests=16, heads=4, layers=4, long_len=500, short_len=50),
}
USER = dict(
    co_interest_concat=["long_aligned", "short_aligned", "short_aligned"],
    user_fields=[{"name": "age", "vocab": 10}, {"name": "gender", "vocab": 3}, {"name": "city", "vocab": 100}],
    user_dense=8,
    user_mlp_hidden=[128],
    score="softmax",
)
FIELD_WIDTHS = {"age": 8, "gender": 4, "city": 16}


def bench_config(profile: str) -> dict:
    return dict(PROFILES[profile], **USER)


def write_random_store(path: str, rng: np.random.Generator, rows: int, dim: int, dtype: str, ids: str) -> None:
    # Drawn in float32 directly: a float64 draw of 1M × 128 would double the memory for nothing.
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    row_ids = None
    if ids == "random":
        # Unique random U64 ids: draw with a margin, keep the first `rows` distinct ones, shuffled.
        drawn = np.unique(rng.integers(0, np.iinfo(np.uint64).max, size=rows + rows // 8 + 16, dtype=np.uint64, endpoint=True))
        if len(drawn) < rows:
            raise SystemExit("could not draw enough distinct ids")  # p ≈ 0 for any realistic row count
        row_ids = rng.permutation(drawn)[:rows]
    write_store(path, vectors, ids=row_ids, dtype=dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write a random-init HCN benchmark model and item stores (SPEC §6 profile).")
    ap.add_argument("--profile", choices=sorted(PROFILES), required=True)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of each store (SPEC §6: 1,000,000)")
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32", "bf16"], help="storage dtype of the stores")
    ap.add_argument("--model-dtype", default="f32", choices=["f16", "f32", "bf16"], help="storage dtype of the model")
    ap.add_argument("--ids", default="none", choices=["none", "random"], help="stores without ids (row numbers) or with random U64 ids")
    ap.add_argument("--stores", default="both", choices=["both", "candidates"],
                    help="'candidates': write only the candidate store (e.g. an F32 one next to an existing model)")
    ap.add_argument("--candidates-name", default="candidates.safetensors", help="file name of the candidate store")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.rows <= 0:
        ap.error("--rows must be positive")
    os.makedirs(a.out, exist_ok=True)
    config = bench_config(a.profile)
    start = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    if a.stores == "both":
        model = init_model(config, a.seed, FIELD_WIDTHS)
        write_model(model, os.path.join(a.out, "model.safetensors"), dtype=a.model_dtype)
        write_random_store(os.path.join(a.out, "tokens.safetensors"), rng, a.rows, config["dim"], a.dtype, a.ids)
    else:
        rng = np.random.default_rng([a.seed, 1])  # an independent stream: the token draw is skipped
    write_random_store(os.path.join(a.out, a.candidates_name), rng, a.rows, config["dim"], a.dtype, a.ids)
    info = {"profile": a.profile, "rows": a.rows, "dtype": a.dtype, "model_dtype": a.model_dtype, "ids": a.ids,
            "seed": a.seed, "config": config, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
