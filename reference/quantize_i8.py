"""SPEC §3's I8 quantization of an item store, in numpy (no torch): the same bits as ``hcn quantize``.

Per row ``scale = max|x| / 127`` and ``q = round-half-to-even(x / scale)``, both in float32 (IEEE
division is correctly rounded, so numpy and Rust agree bit for bit; ``np.rint`` rounds half to even);
a row whose scale is 0 (all zero, or too small for a float32 scale) gets ``q = 0``. The row's value
is then exactly ``scales[i] · q_i``. ``reference/export.py`` writes I8 stores with it
(``write_store(..., dtype="i8")``); ``reference/test_quantize.py`` checks it against the binary.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def quantize_rows(vectors) -> Tuple[np.ndarray, np.ndarray]:
    """``(q [N, D] int8, scales [N] float32)`` of ``vectors`` [N, D] (taken as float32)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors have non-finite values")
    scales = (np.abs(x).max(axis=1, initial=np.float32(0)) / np.float32(127)).astype(np.float32)
    safe = np.where(scales == 0, np.float32(1), scales).astype(np.float32)
    with np.errstate(over="ignore"):
        q = np.rint(x / safe[:, None])  # float32 / float32 → float32, then half to even
    q = np.where(scales[:, None] == 0, np.float32(0), q)
    return np.clip(q, -127, 127).astype(np.int8), scales


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The exact float64 rows ``scales[i] · q_i`` (what the reference evaluates)."""
    return scales.astype(np.float64)[:, None] * q.astype(np.float64)
