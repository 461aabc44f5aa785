"""Writes HCN model files (SPEC §2) and item stores (SPEC §3) as safetensors.

Library use (from a training script)::

    from export import write_model, write_store
    write_model(model, "hcn.safetensors", dtype="f16")                # model: reference.hcn.HCN
    write_model(model, "m.safetensors", dtype={"long.seeds": "f32"}, default_dtype="bf16")
    write_store("tokens.safetensors", vectors, ids=item_ids, dtype="f16")   # ids: U64 by default
    write_store("items8.safetensors", vectors, ids=item_ids, dtype="i8")    # I8 + scales (SPEC §3)

Command line (exporting a trained checkpoint)::

    python reference/export.py model --checkpoint ckpt.pt --out hcn.safetensors --dtype f16
    python reference/export.py store --vectors items.pt --ids ids.npy --out items.safetensors
    python reference/export.py store --vectors items.pt --out items8.safetensors --dtype i8

The file is written by a small writer of our own (not ``safetensors.torch.save_file``) so that U64
ids and BF16 tensors come out exactly, with the 8-byte header alignment the format recommends.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hcn import HCN, normalize_config  # noqa: E402
from quantize_i8 import quantize_rows  # noqa: E402

CONFIG_KEY = "hcn.config"
CONFIG_KEYS = (
    "format",
    "dim",
    "interests",
    "heads",
    "layers",
    "long_len",
    "short_len",
    "co_interest_concat",
    "user_fields",
    "user_dense",
    "user_mlp_hidden",
    "score",
)
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
ELEM_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U64": 8, "I64": 8}
ST_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "i8": "I8", "u64": "U64", "i64": "I64"}

DTypeSpec = Union[str, Mapping[str, str]]


def _norm_dtype(d: str) -> str:
    d = d.lower()
    aliases = {"float32": "f32", "float16": "f16", "half": "f16", "bfloat16": "bf16"}
    d = aliases.get(d, d)
    if d not in TORCH_DTYPES:
        raise ValueError(f"storage dtype must be f32, f16 or bf16, got {d!r}")
    return d


def quantize(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """The float64 tensor holding exactly the values that storing ``t`` as ``dtype`` keeps."""
    return t.detach().to(torch.float32).to(TORCH_DTYPES[_norm_dtype(dtype)]).to(torch.float64)


def _float_bytes(t: torch.Tensor, dtype: str) -> bytes:
    t = t.detach().to(torch.float32).to(TORCH_DTYPES[dtype]).contiguous().cpu()
    if not torch.isfinite(t).all():
        raise ValueError("tensor has non-finite values (after conversion to storage dtype)")
    if dtype == "bf16":
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    np_dtype = {"f32": "<f4", "f16": "<f2"}[dtype]
    return t.numpy().astype(np_dtype).tobytes()


DATA_ALIGN = 4096


def write_safetensors(path: str, tensors: Dict[str, Tuple[str, Tuple[int, ...], bytes]], metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes ``{name: (ST dtype name, shape, little-endian bytes)}`` in safetensors layout."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    # Largest element size first, then by name: the order safetensors' own writers use, so every
    # tensor's data is naturally aligned (the data starts 8-byte aligned). Readers must not rely
    # on it (the format promises no alignment), but zero-copy readers appreciate it.
    order = sorted(tensors, key=lambda n: (-ELEM_SIZE[tensors[n][0]], n))
    for name in order:
        dt, shape, data = tensors[name]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padded with spaces (the format allows it) so that a store's `vectors`, the rows read at
    # random, start on a 4 KiB page: a 256-byte row is then 4 cache lines in one page, not 5 lines
    # and sometimes two pages. The data itself stays 8-byte aligned (`at` rounded down to 8), as
    # the Rust writers do (src/safetensors_file.rs, `padded_header`).
    at = header["vectors"]["data_offsets"][0] if "vectors" in header else 0
    at -= at % 8
    hb += b" " * ((DATA_ALIGN - (8 + len(hb) + at) % DATA_ALIGN) % DATA_ALIGN)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in order:
            f.write(tensors[name][2])
    os.replace(tmp, path)


def config_json(config: dict) -> str:
    """The ``hcn.config`` value: exactly SPEC §2's keys, defaults filled in."""
    c = normalize_config(config)
    return json.dumps({k: c[k] for k in CONFIG_KEYS}, separators=(", ", ": "))


def model_tensors(model: HCN) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def write_model(
    model: HCN,
    path: str,
    dtype: DTypeSpec = "f32",
    default_dtype: str = "f32",
    drop_biases: Union[bool, Iterable[str]] = False,
    drop_zero_biases: bool = False,
) -> Dict[str, str]:
    """Writes ``model`` per SPEC §2 and returns ``{tensor name: storage dtype}``.

    ``dtype``: one storage dtype for all tensors, or a mapping name → dtype (others get
    ``default_dtype``). ``drop_biases``: True (all) or names of ``*.bias`` tensors to omit; an
    omitted bias means zero, so dropping a non-zero bias is refused. ``drop_zero_biases`` omits
    every bias that is exactly zero.
    """
    tensors = model_tensors(model)
    if isinstance(dtype, str):
        per = {name: _norm_dtype(dtype) for name in tensors}
    else:
        unknown = set(dtype) - set(tensors)
        if unknown:
            raise ValueError(f"dtype given for tensors not in the model: {sorted(unknown)}")
        per = {name: _norm_dtype(dtype.get(name, default_dtype)) for name in tensors}
    if drop_biases is True:
        drop = {n for n in tensors if n.endswith(".bias")}
    else:
        drop = set(drop_biases or ())
    if drop_zero_biases:
        drop |= {n for n, t in tensors.items() if n.endswith(".bias") and not bool(t.any())}
    out: Dict[str, Tuple[str, Tuple[int, ...], bytes]] = {}
    for name, t in tensors.items():
        if name in drop:
            if not name.endswith(".bias"):
                raise ValueError(f"only biases may be omitted, not {name}")
            if bool(t.any()):
                raise ValueError(f"{name} is not zero; omitting it would change the model")
            continue
        try:
            out[name] = (ST_NAMES[per[name]], tuple(t.shape), _float_bytes(t, per[name]))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    write_safetensors(path, out, {CONFIG_KEY: config_json(model.config)})
    return {n: per[n] for n in out}


def write_store(
    path: str,
    vectors: Union[torch.Tensor, np.ndarray],
    ids: Optional[Union[Iterable[int], np.ndarray]] = None,
    dtype: str = "f16",
    id_dtype: str = "u64",
) -> None:
    """Writes an item store per SPEC §3: ``vectors`` [N, D]; ``ids`` [N] unique (None: row numbers).

    ``dtype="i8"``: SPEC §3's quantized store, ``vectors`` I8 and ``scales`` F32 (per row
    ``scale = max|x| / 127``, ``q = round-half-to-even(x / scale)`` in float32: the same bits as
    ``hcn quantize`` on an F32 store of the same vectors; see ``quantize_i8.py``)."""
    v = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if not isinstance(vectors, torch.Tensor) else vectors)
    if v.dim() != 2:
        raise ValueError(f"vectors must be [N, D], got shape {tuple(v.shape)}")
    if dtype.lower() in ("i8", "int8"):
        q, scales = quantize_rows(v.detach().to(torch.float32).cpu().numpy())
        out = {
            "vectors": ("I8", tuple(v.shape), q.tobytes()),
            "scales": ("F32", (v.shape[0],), scales.astype("<f4").tobytes()),
        }
    else:
        dt = _norm_dtype(dtype)
        out = {"vectors": (ST_NAMES[dt], tuple(v.shape), _float_bytes(v, dt))}
    if ids is not None:
        ids_list = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if len(ids_list) != v.shape[0]:
            raise ValueError(f"ids has {len(ids_list)} entries, vectors has {v.shape[0]} rows")
        if len(set(ids_list)) != len(ids_list):
            raise ValueError("ids must be unique")
        if id_dtype == "u64":
            if any(i < 0 or i >= 1 << 64 for i in ids_list):
                raise ValueError("U64 ids must be in 0 ..= 2^64-1")
            data = np.array(ids_list, dtype="<u8").tobytes()
        elif id_dtype == "i64":
            if any(i < -(1 << 63) or i >= 1 << 63 for i in ids_list):
                raise ValueError("I64 ids must fit in a signed 64-bit integer")
            data = np.array(ids_list, dtype="<i8").tobytes()
        else:
            raise ValueError(f"id dtype must be u64 or i64, got {id_dtype!r}")
        out["ids"] = (ST_NAMES[id_dtype], (len(ids_list),), data)
    write_safetensors(path, out)


def read_model_config(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"][CONFIG_KEY])


def _load_checkpoint(path: str, config_path: Optional[str]):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    config = None
    if isinstance(ck, dict) and "state_dict" in ck:
        config = ck.get("config")
        state = ck["state_dict"]
    elif isinstance(ck, HCN):
        config, state = ck.config, ck.state_dict()
    else:
        state = ck
    if config_path:
        with open(config_path) as f:
            config = json.load(f)
    if config is None:
        raise SystemExit("no config: pass --config or save {'config': ..., 'state_dict': ...}")
    widths = {
        k[len("user.fields."):-len(".embedding")]: v.shape[1]
        for k, v in state.items()
        if k.startswith("user.fields.") and k.endswith(".embedding")
    }
    model = HCN(config, field_widths=widths)
    missing = [k for k in model.state_dict() if k not in state]
    extra = [k for k in state if k not in model.state_dict()]
    if extra:
        raise SystemExit(f"checkpoint has tensors the model does not: {extra}")
    # Biases may be absent from a checkpoint (SPEC: absent means zero); weights may not.
    if any(not k.endswith(".bias") for k in missing):
        raise SystemExit(f"checkpoint lacks tensors: {missing}")
    full = {k: state.get(k, torch.zeros_like(v)) for k, v in model.state_dict().items()}
    model.load_state_dict(full)
    return model


def _load_array(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    t = torch.load(path, map_location="cpu", weights_only=False)
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export an HCN model (SPEC §2) or an item store (SPEC §3) as safetensors.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="export a model checkpoint")
    m.add_argument("--checkpoint", required=True, help="torch.save'd {'config','state_dict'}, an HCN, or a bare state_dict (with --config)")
    m.add_argument("--config", help="JSON file with the hcn.config (SPEC §2 keys)")
    m.add_argument("--out", required=True)
    m.add_argument("--dtype", default="f32", help="storage dtype of every tensor: f32, f16, bf16")
    m.add_argument("--tensor-dtype", action="append", default=[], metavar="NAME=DTYPE", help="per-tensor override, repeatable")
    m.add_argument("--drop-zero-biases", action="store_true", help="omit biases that are exactly zero")
    s = sub.add_parser("store", help="export an item store (token or candidate vectors)")
    s.add_argument("--vectors", required=True, help=".npy or torch.save'd [N, D] tensor")
    s.add_argument("--ids", help=".npy or torch.save'd [N] integer ids (default: row numbers)")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default="f16", help="f32, f16, bf16, or i8 (SPEC §3: I8 + per-row F32 scales)")
    s.add_argument("--id-dtype", default="u64", choices=["u64", "i64"])
    a = ap.parse_args(argv)
    if a.cmd == "model":
        model = _load_checkpoint(a.checkpoint, a.config)
        if a.tensor_dtype:
            over = dict(kv.split("=", 1) for kv in a.tensor_dtype)
            per = write_model(model, a.out, dtype=over, default_dtype=a.dtype, drop_zero_biases=a.drop_zero_biases)
        else:
            per = write_model(model, a.out, dtype=a.dtype, drop_zero_biases=a.drop_zero_biases)
        print(f"wrote {a.out}: {len(per)} tensors, config {config_json(model.config)}")
    else:
        vectors = _load_array(a.vectors)
        ids = _load_array(a.ids).astype(np.uint64 if a.id_dtype == "u64" else np.int64) if a.ids else None
        write_store(a.out, vectors, ids, dtype=a.dtype, id_dtype=a.id_dtype)
        print(f"wrote {a.out}: {vectors.shape[0]} rows × {vectors.shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
