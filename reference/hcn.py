"""PyTorch reference of the HCN pre-ranking model, written to SPEC.md §1 (the contract).

The parameter names of this module are exactly the tensor names of a model file (SPEC §2), so
``model.state_dict()`` is what ``export.write_model`` writes. Token and candidate vectors are not part
of the module: they are the stores (SPEC §3) and are passed in as tensors.

Shapes: ``B`` users, ``L``/``S`` padded sequence lengths, ``M`` candidates, ``n`` interests, ``D`` dim.
Masks are boolean, ``True`` for a real token. Evaluate in float64 with ``model.double()``.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn
import torch.nn.functional as F

BLOCKS = ("long", "short", "long_aligned", "short_aligned")
SCORE_MODES = ("softmax", "max", "mean")
DEFAULT_CONCAT = ["long_aligned", "short_aligned", "short_aligned"]


def normalize_config(config: dict) -> dict:
    """Returns the config with SPEC §2 defaults filled in and checked (raises ValueError)."""
    c = dict(config)
    c.setdefault("format", "hcn/1")
    if c["format"] != "hcn/1":
        raise ValueError(f"format must be 'hcn/1', got {c['format']!r}")
    for key in ("dim", "interests", "heads", "layers"):
        if int(c[key]) <= 0:
            raise ValueError(f"{key} must be positive")
    for key in ("long_len", "short_len"):
        if int(c[key]) < 0:
            raise ValueError(f"{key} must be non-negative")
    if c["dim"] % c["heads"] != 0:
        raise ValueError("heads must divide dim")
    c["co_interest_concat"] = list(c.get("co_interest_concat") or DEFAULT_CONCAT)
    for b in c["co_interest_concat"]:
        if b not in BLOCKS:
            raise ValueError(f"unknown co_interest_concat block {b!r}")
    c["user_fields"] = [{"name": f["name"], "vocab": int(f["vocab"])} for f in c.get("user_fields") or []]
    c["user_dense"] = int(c.get("user_dense") or 0)
    c["user_mlp_hidden"] = [int(x) for x in c.get("user_mlp_hidden") or []]
    c["score"] = c.get("score") or "softmax"
    if c["score"] not in SCORE_MODES:
        raise ValueError(f"unknown score mode {c['score']!r}")
    return c


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; a row with no valid entry is all zeros.

    The all-zero row is SPEC §1.2's empty-sequence rule. A plain ``masked_fill(-inf)`` softmax would
    give NaN there, so such rows are computed on zeros and then multiplied by 0.
    """
    any_valid = mask.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(~mask, float("-inf"))
    logits = torch.where(any_valid, logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim=-1) * any_valid.to(logits.dtype)


class AttentionLayer(nn.Module):
    """One layer of Algorithm 1: queries from the current interests, keys/values from the tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, c: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # c [B, n, D], x [B, L, D], mask [B, L]
        b, n, dim = c.shape
        length = x.shape[1]
        h = self.heads
        d = dim // h
        q = self.q(c).view(b, n, h, d).transpose(1, 2)  # [B, h, n, d]
        k = self.k(x).view(b, length, h, d).transpose(1, 2)  # [B, h, L, d]
        v = self.v(x).view(b, length, h, d).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # [B, h, n, L]
        a = masked_softmax(logits, mask[:, None, None, :].expand_as(logits))
        heads = (a @ v).transpose(1, 2).reshape(b, n, dim)  # concat(head_0 … head_{h-1})
        return self.o(heads)


class Tower(nn.Module):
    """The hierarchical multi-interest extractor F (SPEC §1.2): seeds, r layers, merge."""

    def __init__(self, dim: int, interests: int, heads: int, layers: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(interests, dim))
        self.layers = nn.ModuleList(AttentionLayer(dim, heads) for _ in range(layers))
        self.merge = nn.Linear(layers * dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        c = self.seeds.unsqueeze(0).expand(b, -1, -1)
        outs = []
        for layer in self.layers:
            c = layer(c, x, mask)
            outs.append(c)
        return self.merge(torch.cat(outs, dim=-1))


class FieldEmbedding(nn.Module):
    """One categorical profile field; the parameter is named ``embedding`` (SPEC §2)."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(vocab, width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids]


class UserProfile(nn.Module):
    """X̂ (SPEC §1.4): field embeddings (config order) ++ dense, then the MLP with ReLU between."""

    def __init__(self, config: dict, field_widths: Dict[str, int]):
        super().__init__()
        self.field_names = [f["name"] for f in config["user_fields"]]
        self.fields = nn.ModuleDict()
        for f in config["user_fields"]:
            self.fields[f["name"]] = FieldEmbedding(f["vocab"], field_widths.get(f["name"], 8))
        in_dim = sum(self.fields[n].embedding.shape[1] for n in self.field_names) + config["user_dense"]
        sizes = [in_dim] + config["user_mlp_hidden"] + [config["dim"]]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, fields: Dict[str, torch.Tensor], dense: Optional[torch.Tensor]) -> torch.Tensor:
        parts = [self.fields[n](fields[n]) for n in self.field_names]
        if dense is not None and dense.shape[-1] > 0:
            parts.append(dense)
        x = torch.cat(parts, dim=-1)
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i + 1 < len(self.mlp):
                x = F.relu(x)
        return x


class HCN(nn.Module):
    """The whole model of SPEC §1. ``field_widths`` sets embedding widths (default 8 per field)."""

    def __init__(self, config: dict, field_widths: Optional[Dict[str, int]] = None):
        super().__init__()
        self.config = normalize_config(config)
        c = self.config
        dim = c["dim"]
        self.long = Tower(dim, c["interests"], c["heads"], c["layers"])
        self.short = Tower(dim, c["interests"], c["heads"], c["layers"])
        self.co_interest = nn.Linear(len(c["co_interest_concat"]) * dim, dim)
        self.has_profile = bool(c["user_fields"]) or c["user_dense"] > 0
        self.user = UserProfile(c, field_widths or {}) if self.has_profile else None
        self.fusion = nn.Linear(2 * dim, dim)

    def co_interests(self, lh: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
        """X̃ from L̂ and Ŝ (SPEC §1.3, eq. 4–6)."""
        e = lh @ sh.transpose(-1, -2)  # [B, n, n], E_ij = L̂_i · Ŝ_j
        blocks = {
            "long": lh,
            "short": sh,
            "long_aligned": torch.softmax(e, dim=-1) @ sh,  # L̃_i = Σ_j softmax_j(E_ij) Ŝ_j
            "short_aligned": torch.softmax(e, dim=-2).transpose(-1, -2) @ lh,  # S̃_j = Σ_i softmax_i(E_ij) L̂_i
        }
        return self.co_interest(torch.cat([blocks[b] for b in self.config["co_interest_concat"]], dim=-1))

    def user_interests(
        self,
        long_x: torch.Tensor,
        long_mask: torch.Tensor,
        short_x: torch.Tensor,
        short_mask: torch.Tensor,
        fields: Optional[Dict[str, torch.Tensor]] = None,
        dense: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """X^U [B, n, D] from padded token vectors [B, L, D] / [B, S, D] and masks [B, L] / [B, S]."""
        lh = self.long(long_x, long_mask)
        sh = self.short(short_x, short_mask)
        xt = self.co_interests(lh, sh)
        b, n, dim = xt.shape
        if self.user is not None:
            xhat = self.user(fields or {}, dense)
        else:
            xhat = xt.new_zeros(b, dim)
        return self.fusion(torch.cat([xt, xhat.unsqueeze(1).expand(b, n, dim)], dim=-1))

    def score(self, interests: torch.Tensor, cand_x: torch.Tensor) -> torch.Tensor:
        """y [B, M] for candidate vectors [B, M, D] (or [M, D], shared by the batch) (SPEC §1.5)."""
        s = cand_x @ interests.transpose(-1, -2)  # [B, M, n]; s_j = x · X^U_j (broadcasts [M, D])
        mode = self.config["score"]
        if mode == "softmax":
            return (torch.softmax(s, dim=-1) * s).sum(dim=-1)
        if mode == "max":
            return s.max(dim=-1).values
        return s.mean(dim=-1)

    def forward(self, long_x, long_mask, short_x, short_mask, fields, dense, cand_x):
        return self.score(self.user_interests(long_x, long_mask, short_x, short_mask, fields, dense), cand_x)
