"""``reference/quantize_i8.py`` against ``hcn quantize``: the same q and scales, bit for bit.

Needs numpy only (no torch) and the built binary::

    cargo build --release && .venv/bin/python reference/test_quantize.py [--hcn target/release/hcn]

Rows are built to hit the rules' edges: exact half-way quotients (ties to even), an all-zero row,
a row whose scale underflows float32, subnormal inputs, large magnitudes, F16 and BF16-like values.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quantize_i8 import quantize_rows  # noqa: E402


def write_f32_store(path, x, ids=None):
    tensors = [("vectors", "F32", list(x.shape), x.astype("<f4").tobytes())]
    if ids is not None:
        tensors.insert(0, ("ids", "U64", [len(ids)], np.asarray(ids, "<u8").tobytes()))
    header, off = {}, 0
    for name, dt, shape, data in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    hb = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(t[3] for t in tensors))


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8 : 8 + n])
    get = lambda k, dt: np.frombuffer(raw[8 + n + h[k]["data_offsets"][0] : 8 + n + h[k]["data_offsets"][1]], dt)
    return h, get


def rows(rng):
    d = 37
    x = rng.standard_normal((500, d)).astype(np.float32) * rng.uniform(1e-3, 1e3, (500, 1)).astype(np.float32)
    x[0] = 0
    x[1, :] = 0
    x[1, 3] = np.float32(1e-44)  # scale underflows float32: an all-zero row
    x[2] = rng.integers(-127, 127, d).astype(np.float32) + 0.5  # exact ties at scale 1 …
    x[2, 0] = 127.0  # … once max|x| = 127
    x[3] = np.float32(3e38) * rng.uniform(-1, 1, d).astype(np.float32)
    x[4] = rng.standard_normal(d).astype(np.float32) * np.float32(1e-39)  # subnormal inputs
    x[5] = rng.standard_normal(d).astype(np.float16).astype(np.float32)  # F16 values
    b = (rng.standard_normal(d).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    x[6] = b  # BF16 values
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hcn", default=os.path.join(os.path.dirname(HERE), "target", "release", "hcn"))
    a = ap.parse_args(argv)
    rng = np.random.default_rng(13)
    x = rows(rng)
    ids = rng.permutation(np.arange(10**6, 10**6 + len(x), dtype=np.uint64))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "s.safetensors"), os.path.join(tmp, "s8.safetensors")
        write_f32_store(src, x, ids)
        subprocess.run([a.hcn, "quantize", "--in", src, "--out", dst], check=True, stdout=subprocess.DEVNULL)
        h, get = read(dst)
        q_rust = get("vectors", "i1").reshape(x.shape)
        s_rust = get("scales", "<f4")
        ids_rust = get("ids", "<u8")
    q_py, s_py = quantize_rows(x)
    assert h["vectors"]["dtype"] == "I8" and h["scales"]["dtype"] == "F32", h
    assert (ids_rust == ids).all(), "ids not copied"
    assert (s_rust.view(np.uint32) == s_py.view(np.uint32)).all(), np.nonzero(s_rust != s_py)
    bad = np.argwhere(q_rust != q_py)
    assert len(bad) == 0, f"q differs at {bad[:5].tolist()}: rust {q_rust[tuple(bad[0])]} numpy {q_py[tuple(bad[0])]}"
    assert s_py[2] == 1 and (q_py[2, 1:] % 2 == 0).all(), "ties must go to the even integer"
    assert s_py[0] == 0 and s_py[1] == 0 and (q_py[:2] == 0).all()
    assert q_py.min() >= -127
    print(f"OK: {x.shape[0]} rows × {x.shape[1]}: q and scales identical to hcn quantize")
    return 0


if __name__ == "__main__":
    sys.exit(main())
