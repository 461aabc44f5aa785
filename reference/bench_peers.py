"""Times the engine's peers on the same SPEC model and stores: PyTorch eager and ONNX Runtime (CPU).

Run: ``python reference/bench_peers.py --dir DIR [--candidates-per-request 50000] [--requests 100]
[--threads 2] [--top-k 1000] [--seed 0] [--peers pytorch,onnxruntime] [--engine target/release/hcn]``
where ``DIR`` holds ``model.safetensors``, ``tokens.safetensors`` and ``candidates.safetensors``
(``reference/make_bench_model.py`` writes them).

What is timed, per request, after a warm-up, exactly as a Python server would serve it:
gather the long/short token rows from the memory-mapped token store → X^U (``HCN.user_interests``,
the SPEC §1 module of ``reference/hcn.py``, in float32) → gather the candidate rows from the
memory-mapped candidate store → scores (``HCN.score``) → top-k. The stores stay in their storage
dtype (F16) in memory, as the engine keeps them; gathered rows are widened to float32 per request.

- ``pytorch-eager``: the stores are wrapped as (zero-copy) torch tensors; gathers are
  ``index_select`` and ``.float()``; ``torch.set_num_threads(threads)``, ``torch.inference_mode()``.
- ``onnxruntime``: the same computation (user side + scoring + top-k, the widening of the gathered
  rows included) exported with ``torch.onnx.export`` at the profile's fixed shapes, run by an
  ``InferenceSession`` with ``intra_op_num_threads=threads``, ``inter_op_num_threads=1`` and all graph
  optimizations; the row gathers stay in numpy (``np.take``) and are timed too.

Masks are passed (all true: benchmark sequences are full, SPEC §4), so both peers run the module's
masked softmax unchanged, the empty-sequence rule included. Top-k is ``torch.topk`` / ONNX ``TopK``;
its tie order is not SPEC's (lower position first), which only matters on exactly equal scores.

Requests are the ones ``hcn bench --seed S`` draws: the same splitmix64 stream, consumed in the
same order (long, short, fields, dense, candidates), so with the same store files the peers and the
engine serve identical requests. Output: one JSON line per peer, keys as ``hcn bench`` plus
``peer``, then one ``check`` line (PyTorch vs ORT scores, and vs ``hcn score`` with ``--engine``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import read_model_config  # noqa: E402
from hcn import HCN  # noqa: E402

NP_DTYPES = {"F32": np.float32, "F16": np.float16, "U64": np.uint64, "I64": np.int64}
MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------------
# Files


def read_header(path: str):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


def mmap_tensor(path: str, name: str) -> Optional[np.ndarray]:
    """The tensor ``name`` of a safetensors file as a copy-on-write memory map (never read whole)."""
    header, base = read_header(path)
    if name not in header:
        return None
    info = header[name]
    if info["dtype"] not in NP_DTYPES:
        raise SystemExit(f"{path}: {name} has dtype {info['dtype']}; this script reads F32/F16 stores (U64/I64 ids)")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if start == end:
        return np.zeros(shape, NP_DTYPES[info["dtype"]])
    # mode "c": private pages, so torch.from_numpy gets a writable array without copying the file.
    return np.memmap(path, dtype=NP_DTYPES[info["dtype"]], mode="c", offset=base + start, shape=shape)


class Store:
    """An item store (SPEC §3): memory-mapped vectors, and the id → row map when it has ids."""

    def __init__(self, path: str):
        self.path = path
        self.vectors = mmap_tensor(path, "vectors")
        if self.vectors is None:
            raise SystemExit(f"{path}: no 'vectors' tensor")
        ids = mmap_tensor(path, "ids")
        self.ids = None if ids is None else np.asarray(ids).astype(np.uint64)
        if self.ids is not None:
            # A sorted copy and its permutation: id → row by binary search, vectorised per request.
            self.order = np.argsort(self.ids, kind="stable")
            self.sorted_ids = self.ids[self.order]

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def row_ids(self, rows: np.ndarray) -> np.ndarray:
        return rows.astype(np.uint64) if self.ids is None else self.ids[rows]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (all known: bench requests are drawn from the store)."""
        if self.ids is None:
            return ids.astype(np.int64)
        return self.order[np.searchsorted(self.sorted_ids, ids)]


def load_model(path: str) -> HCN:
    from safetensors.torch import load_file

    config = read_model_config(path)
    state = {k: v.to(torch.float32) for k, v in load_file(path).items()}
    widths = {k[len("user.fields."):-len(".embedding")]: v.shape[1] for k, v in state.items()
              if k.startswith("user.fields.") and k.endswith(".embedding")}
    model = HCN(config, field_widths=widths)
    full = model.state_dict()
    unknown = sorted(set(state) - set(full))
    if unknown:
        raise SystemExit(f"{path}: tensors not in SPEC §2: {unknown}")
    missing = [k for k in full if k not in state and not k.endswith(".bias")]
    if missing:
        raise SystemExit(f"{path}: missing tensors {missing}")
    model.load_state_dict({k: state.get(k, torch.zeros_like(v)) for k, v in full.items()})
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Requests: the same stream as `hcn bench` (src/bin/hcn/common.rs, bench.rs)


def splitmix(seed: int, start: int, count: int) -> np.ndarray:
    """Outputs ``start+1 … start+count`` of splitmix64 seeded with ``seed`` (state += golden per call)."""
    with np.errstate(over="ignore"):
        k = np.arange(start + 1, start + count + 1, dtype=np.uint64)
        z = np.uint64(seed & MASK64) + k * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def below(x: np.ndarray, n: int) -> np.ndarray:
    """Lemire's ``(x · n) >> 64`` for n < 2^32, in 64-bit pieces (no term overflows)."""
    assert 0 < n < 1 << 32
    n64 = np.uint64(n)
    hi = x >> np.uint64(32)
    lo = x & np.uint64(0xFFFFFFFF)
    with np.errstate(over="ignore"):
        return ((hi * n64 + ((lo * n64) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def symmetric_unit(x: np.ndarray) -> np.ndarray:
    u = (x >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return np.float32(2.0) * u - np.float32(1.0)


class BenchRequest:
    def __init__(self, long, short, fields, dense, candidates):
        self.long, self.short, self.fields, self.dense, self.candidates = long, short, fields, dense, candidates


def generate(config: dict, tokens: Store, cands: Store, count: int, m: int, seed: int) -> List[BenchRequest]:
    nl, ns = config["long_len"], config["short_len"]
    fields = config["user_fields"]
    nd = config["user_dense"]
    per = nl + ns + len(fields) + nd + m
    out = []
    for i in range(count):
        x = splitmix(seed, i * per, per)
        o = 0
        long = tokens.row_ids(below(x[o:o + nl], len(tokens))); o += nl
        short = tokens.row_ids(below(x[o:o + ns], len(tokens))); o += ns
        f = {}
        for field in fields:
            f[field["name"]] = int(below(x[o:o + 1], field["vocab"])[0]); o += 1
        dense = symmetric_unit(x[o:o + nd]); o += nd
        cand = cands.row_ids(below(x[o:o + m], len(cands)))
        out.append(BenchRequest(long, short, f, dense, cand))
    return out


# ----------------------------------------------------------------------------------------------
# Peers


class Served(torch.nn.Module):
    """Everything after the row gathers, for export: widen → X^U → scores → top-k."""

    def __init__(self, model: HCN, k: int):
        super().__init__()
        self.model = model
        self.k = k
        self.field_names = [f["name"] for f in model.config["user_fields"]]

    def forward(self, long_x, long_mask, short_x, short_mask, field_ids, dense, cand_x):
        # long_x [1, L, D], short_x [1, S, D], cand_x [M, D] in the store dtype; field_ids [F] int64.
        fields = {name: field_ids[i:i + 1] for i, name in enumerate(self.field_names)}
        xu = self.model.user_interests(long_x.float(), long_mask, short_x.float(), short_mask, fields, dense)
        y = self.model.score(xu, cand_x.float())[0]
        values, positions = torch.topk(y, self.k)
        return y, values, positions


def pytorch_peer(model: HCN, tokens: Store, cands: Store, k: int):
    tok_t = torch.from_numpy(tokens.vectors)
    cand_t = torch.from_numpy(cands.vectors)
    served = Served(model, k)

    def serve(req: BenchRequest):
        lx = tok_t.index_select(0, torch.from_numpy(tokens.rows_of(req.long)))[None]
        sx = tok_t.index_select(0, torch.from_numpy(tokens.rows_of(req.short)))[None]
        lm = torch.ones(lx.shape[:2], dtype=torch.bool)
        sm = torch.ones(sx.shape[:2], dtype=torch.bool)
        fid = torch.tensor([req.fields[n] for n in served.field_names], dtype=torch.int64)
        dense = torch.from_numpy(req.dense)[None]
        cx = cand_t.index_select(0, torch.from_numpy(cands.rows_of(req.candidates)))
        y, values, positions = served(lx, lm, sx, sm, fid, dense, cx)
        return y, req.candidates[positions.numpy()]

    return serve


def export_onnx(model: HCN, config: dict, tokens: Store, cands: Store, m: int, k: int, path: str) -> str:
    served = Served(model, k).eval()
    dim = config["dim"]
    nf = len(config["user_fields"])
    args = (
        torch.zeros(1, config["long_len"], dim, dtype=torch.from_numpy(tokens.vectors[:1]).dtype),
        torch.ones(1, config["long_len"], dtype=torch.bool),
        torch.zeros(1, config["short_len"], dim, dtype=torch.from_numpy(tokens.vectors[:1]).dtype),
        torch.ones(1, config["short_len"], dtype=torch.bool),
        torch.zeros(nf, dtype=torch.int64),
        torch.zeros(1, config["user_dense"], dtype=torch.float32),
        torch.zeros(m, dim, dtype=torch.from_numpy(cands.vectors[:1]).dtype),
    )
    names = ["long_x", "long_mask", "short_x", "short_mask", "field_ids", "dense", "cand_x"]
    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(served, args, path, input_names=names, output_names=["scores", "top_values", "top_positions"],
                                  dynamo=dynamo, opset_version=18 if dynamo else 17, verbose=False)
            return "dynamo" if dynamo else "torchscript"
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both if neither works
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: {e}")
    raise SystemExit("ONNX export failed:\n" + "\n".join(errors))


def ort_peer(path: str, config: dict, tokens: Store, cands: Store, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    input_names = {i.name for i in sess.get_inputs()}
    field_names = [f["name"] for f in config["user_fields"]]
    lm = np.ones((1, config["long_len"]), dtype=bool)
    sm = np.ones((1, config["short_len"]), dtype=bool)

    def serve(req: BenchRequest):
        feed = {
            "long_x": np.take(tokens.vectors, tokens.rows_of(req.long), axis=0)[None],
            "long_mask": lm,
            "short_x": np.take(tokens.vectors, tokens.rows_of(req.short), axis=0)[None],
            "short_mask": sm,
            "field_ids": np.array([req.fields[n] for n in field_names], dtype=np.int64),
            "dense": req.dense[None],
            "cand_x": np.take(cands.vectors, cands.rows_of(req.candidates), axis=0),
        }
        # The exporter drops inputs the graph does not use (the masks, once constant-folded).
        y, values, positions = sess.run(None, {n: v for n, v in feed.items() if n in input_names})
        return y, req.candidates[positions]

    return serve


def timed(serve, requests: List[BenchRequest]) -> Dict[str, float]:
    warmup = min(max(len(requests) // 10, 1), 10)  # as `hcn bench`
    for i in range(warmup):
        serve(requests[i % len(requests)])
    lat = []
    total = 0.0
    scored = 0
    for req in requests:
        start = time.perf_counter()
        serve(req)
        s = time.perf_counter() - start
        lat.append(s * 1e6)
        total += s
        scored += len(req.candidates)
    lat = np.array(lat)
    return {
        "median_us": float(np.percentile(lat, 50)),
        "p90_us": float(np.percentile(lat, 90)),
        "p99_us": float(np.percentile(lat, 99)),
        "candidates_per_s": scored / total if total > 0 else 0.0,
    }


def engine_scores(engine: str, d: str, candidates: str, reqs: List[BenchRequest], k: int) -> List[np.ndarray]:
    """Scores of ``reqs`` from ``hcn score`` (the engine's CLI), one array per request."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for r in reqs:
            f.write(json.dumps({"long": r.long.tolist(), "short": r.short.tolist(), "fields": r.fields,
                                "dense": [float(v) for v in r.dense], "candidates": r.candidates.tolist()}) + "\n")
        name = f.name
    try:
        out = subprocess.run([engine, "score", "--model", os.path.join(d, "model.safetensors"),
                              "--tokens", os.path.join(d, "tokens.safetensors"),
                              "--candidates", os.path.join(d, candidates),
                              "--request", name, "--top-k", str(k)],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(name)
    res = []
    for line in out.splitlines():
        obj = json.loads(line)
        if "error" in obj:
            raise SystemExit(f"hcn score: {obj['error']}")
        res.append(np.array(obj["scores"], dtype=np.float64))
    return res


def self_test() -> None:
    """The request stream must be `hcn bench`'s bit for bit, or the peers serve other requests."""
    # splitmix64's published outputs for seed 0 (Vigna's reference implementation).
    assert [int(v) for v in splitmix(0, 0, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # The closed form (state after call k = seed + k·golden) against the stateful definition,
    # including a seed near 2^64 so the additions wrap.
    for seed in (12345, MASK64 - 5):
        state, want = seed, []
        for _ in range(1100):
            state = (state + 0x9E3779B97F4A7C15) & MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            want.append(z ^ (z >> 31))
        assert [int(v) for v in splitmix(seed, 1000, 100)] == want[1000:], seed
    x = splitmix(12345, 1000, 20000)
    for n in (1, 3, 10, 100, 1_000_000, (1 << 32) - 1):
        got = below(x, n)
        assert got.tolist() == [(int(v) * n) >> 64 for v in x], n  # Lemire, with exact big integers
        assert got.min() >= 0 and got.max() < n
    u = symmetric_unit(x)
    want = [np.float32(2.0) * np.float32((int(v) >> 40) / (1 << 24)) - np.float32(1.0) for v in x[:100]]
    assert u[:100].tolist() == [float(w) for w in want]
    assert u.min() >= -1.0 and u.max() < 1.0
    print("self-test ok")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time PyTorch eager and ONNX Runtime on the engine's benchmark requests.")
    ap.add_argument("--self-test", action="store_true", help="check the request generator against splitmix64 and exit")
    ap.add_argument("--dir", help="holds model.safetensors, tokens.safetensors, candidates.safetensors")
    ap.add_argument("--candidates", default="candidates.safetensors", help="candidate store file name inside --dir")
    ap.add_argument("--candidates-per-request", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", default="pytorch,onnxruntime", help="comma list of pytorch, onnxruntime")
    ap.add_argument("--check-requests", type=int, default=3, help="requests compared between peers (and the engine)")
    ap.add_argument("--engine", help="path of the hcn binary: also compare scores with `hcn score` on the check requests")
    ap.add_argument("--onnx", help="where to write the exported ONNX model (default: a temporary file)")
    a = ap.parse_args(argv)
    if a.self_test:
        self_test()
        return 0
    if not a.dir:
        ap.error("--dir is required")
    peers = [p for p in a.peers.split(",") if p]
    if any(p not in ("pytorch", "onnxruntime") for p in peers) or not peers:
        ap.error("--peers: a comma list of pytorch, onnxruntime")
    if a.requests < 1 or a.candidates_per_request < 1:
        ap.error("--requests and --candidates-per-request must be positive")
    k = min(a.top_k, a.candidates_per_request)

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (only possible before any parallel work)
    model_path = os.path.join(a.dir, "model.safetensors")
    config = read_model_config(model_path)
    model = load_model(model_path)
    tokens = Store(os.path.join(a.dir, "tokens.safetensors"))
    cands = Store(os.path.join(a.dir, a.candidates))
    for s in (tokens, cands):
        if s.vectors.shape[1] != config["dim"]:
            raise SystemExit(f"{s.path}: width {s.vectors.shape[1]}, model dim {config['dim']}")
    requests = generate(config, tokens, cands, a.requests, a.candidates_per_request, a.seed)
    common = {"requests": a.requests, "batch": 1, "threads": a.threads, "device": "cpu",
              "store_dtype": str(cands.vectors.dtype)}
    results = {}
    check_reqs = requests[: max(0, min(a.check_requests, len(requests)))]

    with torch.inference_mode():
        if "pytorch" in peers:
            serve = pytorch_peer(model, tokens, cands, k)
            stats = timed(serve, requests)
            print(json.dumps({"peer": "pytorch-eager", **common, **stats, "torch": torch.__version__}), flush=True)
            results["pytorch"] = [serve(r) for r in check_reqs]

    if "onnxruntime" in peers:
        import onnxruntime as ort

        tmpdir = None
        path = a.onnx
        if path is None:
            tmpdir = tempfile.TemporaryDirectory()
            path = os.path.join(tmpdir.name, "hcn-served.onnx")
        exporter = export_onnx(model, config, tokens, cands, a.candidates_per_request, k, path)
        serve = ort_peer(path, config, tokens, cands, a.threads)
        stats = timed(serve, requests)
        print(json.dumps({"peer": "onnxruntime", **common, **stats, "onnxruntime": ort.__version__,
                          "exporter": exporter}), flush=True)
        results["onnxruntime"] = [serve(r) for r in check_reqs]
        if tmpdir is not None:
            tmpdir.cleanup()

    check = {"check": "scores", "requests": len(check_reqs)}
    ref = results.get("pytorch")
    if ref is not None and "onnxruntime" in results:
        ys = [(np.asarray(p[0].numpy() if hasattr(p[0], "numpy") else p[0], np.float64),
               np.asarray(o[0], np.float64)) for p, o in zip(ref, results["onnxruntime"])]
        check["ort_vs_pytorch_max_abs"] = max(float(np.abs(p - o).max()) for p, o in ys)
        check["ort_vs_pytorch_max_rel"] = max(float((np.abs(p - o) / (1 + np.abs(p))).max()) for p, o in ys)
        check["ort_vs_pytorch_topk_same_ids"] = all(
            set(p[1].tolist()) == set(o[1].tolist()) for p, o in zip(ref, results["onnxruntime"]))
    if a.engine and check_reqs:
        eng = engine_scores(a.engine, a.dir, a.candidates, check_reqs, k)
        for name, res in results.items():
            diffs = [np.abs(np.asarray(r[0], np.float64) - e) for r, e in zip(res, eng)]
            rel = [d / (1 + np.abs(e)) for d, e in zip(diffs, eng)]
            check[f"{name}_vs_engine_max_abs"] = max(float(d.max()) for d in diffs)
            check[f"{name}_vs_engine_max_rel"] = max(float(r.max()) for r in rel)
    check["python"] = platform.python_version()
    print(json.dumps(check), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
