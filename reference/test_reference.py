"""Self-tests of the Python reference: ``.venv/bin/python reference/test_reference.py``.

Checks what the fixtures alone do not: a padded batch equals one-by-one evaluation, the empty-sequence
rule gives no NaN and zero attention output, gradients stay finite through it, files written by
``export`` read back (through the ``safetensors`` library) as the stored values, and the CLI exports a
checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hcn import HCN  # noqa: E402
from export import quantize, read_model_config, write_model, write_store  # noqa: E402
from gen_fixtures import TINY, init_model  # noqa: E402
from quantize_i8 import quantize_rows  # noqa: E402

CONFIG = dict(TINY, user_fields=[{"name": "age", "vocab": 5}], user_dense=2, user_mlp_hidden=[4])


def batch_inputs(lengths, dim, seed):
    g = torch.Generator().manual_seed(seed)
    L = max(max(lengths), 1)
    x = torch.randn(len(lengths), L, dim, generator=g, dtype=torch.float64)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
        x[b, n:] = 1e3  # padding garbage must not leak into the result
    return x, mask


def test_batch_equals_single():
    m = init_model(CONFIG, 1).double()
    long_len, short_len = [7, 0, 3, 1], [2, 3, 0, 0]
    lx, lm = batch_inputs(long_len, 10, 1)
    sx, sm = batch_inputs(short_len, 10, 2)
    fields = {"age": torch.tensor([0, 4, 2, 1])}
    dense = torch.randn(4, 2, dtype=torch.float64)
    cand = torch.randn(4, 6, 10, dtype=torch.float64)
    with torch.no_grad():
        xu = m.user_interests(lx, lm, sx, sm, fields, dense)
        y = m.score(xu, cand)
        assert torch.isfinite(xu).all() and torch.isfinite(y).all()
        for b in range(4):
            one = m.user_interests(
                lx[b : b + 1, : max(long_len[b], 1)], lm[b : b + 1, : max(long_len[b], 1)],
                sx[b : b + 1, : max(short_len[b], 1)], sm[b : b + 1, : max(short_len[b], 1)],
                {"age": fields["age"][b : b + 1]}, dense[b : b + 1],
            )
            assert torch.allclose(one[0], xu[b], rtol=0, atol=1e-12), b
            assert torch.allclose(m.score(one, cand[b : b + 1])[0], y[b], rtol=0, atol=1e-12), b


def test_empty_sequence_rule():
    m = init_model(CONFIG, 2).double()
    x, mask = batch_inputs([0], 10, 3)
    layer = m.long.layers[0]
    with torch.no_grad():
        h = layer(m.long.seeds.unsqueeze(0), x, mask)
        # All heads zero, so H_0 = bo_0 for every interest.
        assert torch.allclose(h[0], layer.o.bias.expand(3, 10), atol=0)
    # Gradients through an all-masked row stay finite (training uses the same module).
    m.float()
    x, mask = batch_inputs([0, 2], 10, 4)
    out = m.user_interests(x.float(), mask, x.float(), mask, {"age": torch.tensor([1, 2])}, torch.ones(2, 2))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_export_round_trip():
    m = init_model(dict(CONFIG, score="max"), 3)
    with torch.no_grad():
        m.fusion.bias.zero_()
    names = sorted(m.state_dict())
    dtypes = {n: ["f32", "f16", "bf16"][i % 3] for i, n in enumerate(names)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        written = write_model(m, path, dtype=dtypes, drop_zero_biases=True)
        assert "fusion.bias" not in written
        cfg = read_model_config(path)
        assert list(cfg) == ["format", "dim", "interests", "heads", "layers", "long_len", "short_len",
                             "co_interest_concat", "user_fields", "user_dense", "user_mlp_hidden", "score"]
        assert cfg["score"] == "max" and cfg["co_interest_concat"] == ["long_aligned", "short_aligned", "short_aligned"]
        want = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
        with safe_open(path, "pt") as f:
            assert set(f.keys()) == set(names) - {"fusion.bias"}
            for n in f.keys():
                t = f.get_tensor(n)
                assert t.dtype == want[dtypes[n]], n
                assert torch.equal(t.double(), quantize(m.state_dict()[n], dtypes[n])), n
        try:
            write_model(m, path, drop_biases=["long.merge.bias"])
            raise AssertionError("dropping a non-zero bias must be refused")
        except ValueError as e:
            assert "long.merge.bias" in str(e)

        vec = np.random.default_rng(0).standard_normal((5, 10))
        ids = [0, 1 << 63, (1 << 64) - 1, 7, 12345678901234567890]
        spath = os.path.join(d, "s.safetensors")
        write_store(spath, vec, ids, dtype="bf16")
        with safe_open(spath, "pt") as f:
            assert f.get_tensor("vectors").dtype == torch.bfloat16
            got = [int(x) & ((1 << 64) - 1) for x in f.get_tensor("ids").view(torch.int64).tolist()]
            assert got == ids
            assert torch.equal(f.get_tensor("vectors").double(), quantize(torch.from_numpy(vec), "bf16"))

        # I8 (SPEC §3): vectors I8 + scales F32, the same bits as quantize_i8 (and hcn quantize).
        vec[2] = 0.0
        write_store(spath, vec, ids, dtype="i8")
        q, scales = quantize_rows(vec)
        with safe_open(spath, "pt") as f:
            assert f.get_tensor("vectors").dtype == torch.int8
            assert torch.equal(f.get_tensor("vectors"), torch.from_numpy(q))
            assert torch.equal(f.get_tensor("scales"), torch.from_numpy(scales))
        assert scales[2] == 0 and (q[2] == 0).all() and q.min() >= -127
        rows = scales.astype(np.float64)[:, None] * q
        assert np.abs(rows - vec).max() <= (scales.max() / 2) * (1 + 1e-4)


def test_cli_exports_checkpoint():
    m = init_model(CONFIG, 4)
    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, "ck.pt")
        torch.save({"config": m.config, "state_dict": m.state_dict()}, ck)
        out = os.path.join(d, "m.safetensors")
        subprocess.run([sys.executable, os.path.join(HERE, "export.py"), "model", "--checkpoint", ck, "--out", out,
                        "--dtype", "f16", "--tensor-dtype", "long.seeds=f32"], check=True, capture_output=True)
        with safe_open(out, "pt") as f:
            assert f.get_tensor("long.seeds").dtype == torch.float32
            assert f.get_tensor("fusion.weight").dtype == torch.float16
            assert json.loads(f.metadata()["hcn.config"])["user_fields"] == [{"name": "age", "vocab": 5}]


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"{name}: ok")
