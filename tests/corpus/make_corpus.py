#!/usr/bin/env python3
"""Writes the hostile model and store files of tests/corpus/ (models/, stores/) from the valid
fixtures, each next to its `.expect` (`kind`, `tensor`, `contains` lines; see tests/fuzz_props.rs).

The `.expect` files are written by hand, not by this script: they record what the loader must say,
and a change of message has to be a deliberate edit. Run from the repository root:
    python3 tests/corpus/make_corpus.py
"""
import json
import os
import struct

FIX = "tests/fixtures"
OUT = "tests/corpus"


def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    data = b[8 + n:]
    meta = header.pop("__metadata__", None)
    tensors = []
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        s, e = t["data_offsets"]
        tensors.append({"name": name, "dtype": t["dtype"], "shape": t["shape"], "data": bytearray(data[s:e])})
    return meta, tensors


def build(meta, tensors, header_text=None, pad=0):
    """Lays tensors out contiguously in list order (offsets recomputed)."""
    header = {}
    if meta is not None:
        header["__metadata__"] = meta
    off = 0
    data = b""
    for t in tensors:
        header[t["name"]] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [off, off + len(t["data"])]}
        off += len(t["data"])
        data += bytes(t["data"])
    text = header_text if header_text is not None else json.dumps(header).encode()
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text + data


def write(kind, name, b):
    os.makedirs(os.path.join(OUT, kind), exist_ok=True)
    with open(os.path.join(OUT, kind, name + ".safetensors"), "wb") as f:
        f.write(b)


def find(tensors, name):
    return next(t for t in tensors if t["name"] == name)


def with_config(meta, **changes):
    cfg = json.loads(meta["hcn.config"])
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return {**meta, "hcn.config": json.dumps(cfg)}


def copy(tensors):
    return [{**t, "shape": list(t["shape"]), "data": bytearray(t["data"])} for t in tensors]


def models():
    meta, ts = read(f"{FIX}/tinier_mixed_onefile/model.safetensors")
    pmeta, pts = read(f"{FIX}/tiny_f32/model.safetensors")
    valid = build(meta, ts)
    m = {}
    # Container.
    m["empty_file"] = b""
    m["seven_bytes"] = valid[:7]
    m["header_len_max_u64"] = struct.pack("<Q", 2**64 - 1) + valid[8:]
    m["header_len_past_end"] = struct.pack("<Q", len(valid)) + valid[8:]
    m["header_not_json"] = build(meta, ts, header_text=b"{not json at all}")
    m["header_json_array"] = build(meta, ts, header_text=b"[1, 2, 3]")
    m["header_not_utf8"] = build(meta, ts, header_text=b'{"\xff\xfe": 1}')
    m["truncated_data"] = valid[:-1]
    m["trailing_bytes"] = valid + b"\0" * 16
    t = copy(ts)
    t[0]["shape"] = [2**62, 4]
    m["shape_overflows"] = build(meta, t)
    # Offsets edited in the header text after layout.
    hdr = json.loads(valid[8:8 + struct.unpack("<Q", valid[:8])[0]])
    names = [t["name"] for t in ts]
    h = json.loads(json.dumps(hdr))
    h[names[1]]["data_offsets"][0] -= 4
    h[names[0]]["data_offsets"][1] -= 4
    m["offsets_span_mismatch"] = build(None, [], header_text=json.dumps(h).encode()) + bytes(valid[8 + len(valid[8:8 + struct.unpack('<Q', valid[:8])[0]]):])
    h = json.loads(json.dumps(hdr))
    h[names[-1]]["data_offsets"][1] += 1000
    m["offsets_past_end"] = struct.pack("<Q", len(json.dumps(h))) + json.dumps(h).encode() + valid[8 + struct.unpack("<Q", valid[:8])[0]:]
    text = json.dumps(hdr)
    dup = text[:-1] + ', "' + names[0] + '": ' + json.dumps(hdr[names[0]]) + "}"
    m["duplicate_tensor_key"] = struct.pack("<Q", len(dup)) + dup.encode() + valid[8 + struct.unpack("<Q", valid[:8])[0]:]
    h = json.loads(json.dumps(hdr))
    h["__metadata__"]["hcn.config"] = json.loads(h["__metadata__"]["hcn.config"])
    m["metadata_value_not_string"] = struct.pack("<Q", len(json.dumps(h))) + json.dumps(h).encode() + valid[8 + struct.unpack("<Q", valid[:8])[0]:]
    # Config.
    m["no_metadata"] = build(None, ts)
    m["config_not_json"] = build({"hcn.config": "dim=6"}, ts)
    m["config_format_v2"] = build(with_config(meta, format="hcn/2"), ts)
    m["config_heads_do_not_divide_dim"] = build(with_config(meta, heads=4), ts)
    m["config_zero_interests"] = build(with_config(meta, interests=0), ts)
    m["config_negative_long_len"] = build(with_config(meta, long_len=-1), ts)
    m["config_float_dim"] = build(with_config(meta, dim=6.0), ts)
    m["config_huge_dim"] = build(with_config(meta, dim=2**40, heads=1), ts)
    m["config_unknown_score"] = build(with_config(meta, score="median"), ts)
    m["config_empty_concat"] = build(with_config(meta, co_interest_concat=[]), ts)
    m["config_missing_dim"] = build(with_config(meta, dim=None), ts)
    # Tensors.
    m["config_two_layers_missing_tensor"] = build(with_config(meta, layers=2), ts)
    m["config_dim_12_misshaped"] = build(with_config(meta, dim=12), ts)
    t = copy(ts)
    find(t, "long.seeds")["shape"] = [6, 2]
    m["seeds_transposed"] = build(meta, t)
    t = copy(ts)
    find(t, "co_interest.weight")["dtype"] = "I16"
    m["weight_dtype_i16"] = build(meta, t)
    t = copy(ts)
    find(t, "long.seeds")["data"][2:4] = b"\xc0\x7f"
    m["nan_in_bf16_seeds"] = build(meta, t)
    t = copy(ts)
    find(t, "fusion.weight")["data"][40:44] = struct.pack("<f", float("inf"))
    m["inf_in_f32_fusion"] = build(meta, t)
    t = copy(ts)
    find(t, "co_interest.weight")["data"][0:2] = b"\x00\xfc"
    m["neg_inf_in_f16_co_interest"] = build(meta, t)
    t = [x for x in copy(ts) if x["name"] != "fusion.weight"]
    m["missing_fusion_weight"] = build(meta, t)
    t = copy(ts) + [{"name": "surprise", "dtype": "F32", "shape": [1], "data": bytearray(4)}]
    m["extra_tensor"] = build(meta, t)
    t = copy(ts) + [{"name": "long.layers.0.q.bias", "dtype": "F32", "shape": [5], "data": bytearray(20)}]
    m["bias_wrong_length"] = build(meta, t)
    # Profile (tiny_f32).
    m["profile_vocab_mismatch"] = build(with_config(pmeta, user_fields=[{"name": "age", "vocab": 6}, {"name": "city", "vocab": 7}]), pts)
    m["profile_dense_mismatch"] = build(with_config(pmeta, user_dense=4), pts)
    m["profile_tensors_without_fields"] = build(with_config(pmeta, user_fields=[], user_dense=0, user_mlp_hidden=[]), pts)
    m["profile_duplicate_field_name"] = build(with_config(pmeta, user_fields=[{"name": "age", "vocab": 5}, {"name": "age", "vocab": 7}]), pts)
    # Nesting deep enough to overflow a recursive parser's stack.
    deep = "[" * 10000 + "]" * 10000
    text = json.dumps(hdr)[:-1] + ', "deep": ' + deep + "}"
    m["header_nested_10000_deep"] = struct.pack("<Q", len(text)) + text.encode() + valid[8 + struct.unpack("<Q", valid[:8])[0]:]
    m["config_nested_10000_deep"] = build({"hcn.config": '{"format": "hcn/1", "x": ' + deep + "}"}, ts)
    # Valid: padded header, keys in another order.
    m["valid_padded_header"] = build(meta, ts, pad=13)
    m["valid_reordered_keys"] = build(None, [], header_text=json.dumps(dict(reversed(list(hdr.items())))).encode()) + valid[8 + struct.unpack("<Q", valid[:8])[0]:]
    for name, b in m.items():
        write("models", name, b)


def f32(x):
    """x rounded to float32 (IEEE), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def quantized(tensors):
    """The store's F16 `vectors` quantized as `hcn quantize` does (SPEC §3): per row
    scale = max|x| / 127 and q = round-half-to-even(x / scale), both in float32."""
    out = []
    for t in copy(tensors):
        if t["name"] != "vectors":
            out.append(t)
            continue
        n, d = t["shape"]
        vals = list(struct.unpack(f"<{n * d}e", bytes(t["data"])))
        q, scales = bytearray(), bytearray()
        for r in range(n):
            row = vals[r * d : (r + 1) * d]
            scale = f32(f32(max(abs(v) for v in row)) / 127.0)
            scales += struct.pack("<f", scale)
            for v in row:
                # Python's round() is half to even; the division is rounded to float32 first.
                k = 0 if scale == 0 else max(-127, min(127, round(f32(v / scale))))
                q += struct.pack("<b", k)
        out.append({"name": "vectors", "dtype": "I8", "shape": [n, d], "data": q})
        out.append({"name": "scales", "dtype": "F32", "shape": [n], "data": scales})
    return out


def stores():
    meta, ts = read(f"{FIX}/tinier_mixed_onefile/tokens.safetensors")
    s = {}
    t = copy(ts)
    find(t, "ids")["data"][8:16] = find(t, "ids")["data"][0:8]
    s["duplicate_ids"] = build(meta, t)
    t = copy(ts)
    ids = find(t, "ids")
    ids["dtype"], ids["shape"] = "I32", [60]
    s["ids_i32"] = build(meta, t)
    t = copy(ts)
    ids = find(t, "ids")
    ids["shape"], ids["data"] = [29], ids["data"][:-8]
    s["ids_fewer_than_rows"] = build(meta, t)
    t = copy(ts)
    find(t, "vectors")["data"][14:16] = b"\x00\x7e"
    s["nan_in_f16_vectors"] = build(meta, t)
    t = copy(ts)
    find(t, "vectors")["shape"] = [180]
    s["vectors_one_dimensional"] = build(meta, t)
    s["vectors_missing"] = build(meta, [x for x in copy(ts) if x["name"] == "ids"])
    t = copy(ts)
    find(t, "vectors")["dtype"] = "I16"
    s["vectors_i16"] = build(meta, t)
    s["extra_tensor"] = build(meta, copy(ts) + [{"name": "norms", "dtype": "F32", "shape": [30], "data": bytearray(120)}])
    s["empty_header"] = build(None, [])
    t = [x for x in copy(ts) if x["name"] == "vectors"]
    t[0]["shape"], t[0]["data"] = [30, 0], bytearray()
    s["vectors_zero_width"] = build(meta, t)
    t = copy(ts)
    find(t, "ids")["dtype"] = "I64"
    s["valid_i64_ids"] = build(meta, t)
    cmeta, cts = read(f"{FIX}/tiny_f32/candidates.safetensors")
    s["truncated_header"] = build(cmeta, cts)[:40]
    # I8 stores (SPEC §3): the same store quantized, then broken one way each.
    q = quantized(ts)
    s["valid_i8"] = build(meta, q)
    s["i8_scales_missing"] = build(meta, [x for x in copy(q) if x["name"] != "scales"])
    t = copy(q)
    find(t, "scales")["data"][8:12] = struct.pack("<f", -0.25)
    s["i8_scale_negative"] = build(meta, t)
    t = copy(q)
    find(t, "scales")["data"][12:16] = struct.pack("<f", float("nan"))
    s["i8_scale_nan"] = build(meta, t)
    t = copy(q)
    find(t, "scales")["data"][0:4] = struct.pack("<f", float("inf"))
    s["i8_scale_inf"] = build(meta, t)
    t = copy(q)
    find(t, "scales")["data"][0:4] = struct.pack("<f", 3e38)  # row 0 has |q| = 127: 3.8e40
    s["i8_scale_overflows_f32"] = build(meta, t)
    t = copy(q)
    find(t, "vectors")["data"][13] = 0x80
    s["i8_value_minus_128"] = build(meta, t)
    t = copy(q)
    sc = find(t, "scales")
    sc["shape"], sc["data"] = [29], sc["data"][:-4]
    s["i8_scales_wrong_length"] = build(meta, t)
    t = copy(q)
    sc = find(t, "scales")
    sc["dtype"], sc["shape"], sc["data"] = "F16", [30], sc["data"][:60]
    s["i8_scales_f16"] = build(meta, t)
    s["scales_with_f16_vectors"] = build(meta, copy(ts) + [find(copy(q), "scales")])
    for name, b in s.items():
        write("stores", name, b)


if __name__ == "__main__":
    models()
    stores()
