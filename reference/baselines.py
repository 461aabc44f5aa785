"""The item tower and the mean-pooling baseline used by ``train.py`` (training side only).

* ``ItemTower``: Φ_{W^I}(X^I) of the paper — maps each item's static features to its D-vector.
  Here it is an MLP (features → 64 → D, ReLU) of the synthetic item features
  (``data.World.features``), trained jointly with the user side; optionally plus a free per-item
  vector (``residual``, off by default: it overfits 24k samples). After training its output table
  is both item stores (SPEC §3): the token store (behaviors) and the candidate store.
* ``MeanPool``: the "mean pooling" baseline of the paper's Tables 3/5 (a YouTube-DNN-style single
  user vector): u = MLP([mean(long tokens), mean(short tokens), profile]), y = ⟨x, u⟩.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn
import torch.nn.functional as F


class ItemTower(nn.Module):
    def __init__(self, features: torch.Tensor, dim: int, hidden: int = 64, residual: bool = False):
        super().__init__()
        self.register_buffer("features", features.clone())
        self.mlp = nn.Sequential(nn.Linear(features.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.residual = nn.Parameter(torch.zeros(features.shape[0], dim)) if residual else None

    def table(self) -> torch.Tensor:
        """[N, D]: every item's vector (what the stores hold)."""
        t = self.mlp(self.features)
        return t if self.residual is None else t + self.residual


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens; zero for an empty sequence."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPool(nn.Module):
    """Single-vector user model: MLP over [mean long, mean short, field embeddings, dense]."""

    def __init__(self, dim: int, fields: Dict[str, int], field_widths: Dict[str, int], dense: int, hidden: int = 128):
        super().__init__()
        self.field_names = list(fields)
        self.fields = nn.ModuleDict({n: nn.Embedding(v, field_widths[n]) for n, v in fields.items()})
        in_dim = 2 * dim + sum(field_widths[n] for n in fields) + dense
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def user_vector(self, long_x, long_mask, short_x, short_mask, fields: Dict[str, torch.Tensor],
                    dense: Optional[torch.Tensor]) -> torch.Tensor:
        parts = [masked_mean(long_x, long_mask), masked_mean(short_x, short_mask)]
        parts += [self.fields[n](fields[n]) for n in self.field_names]
        if dense is not None:
            parts.append(dense)
        return self.mlp(torch.cat(parts, dim=-1))

    def forward(self, long_x, long_mask, short_x, short_mask, fields, dense, cand_x):
        u = self.user_vector(long_x, long_mask, short_x, short_mask, fields, dense)
        return (cand_x * u.unsqueeze(1)).sum(-1)


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9: binary cross-entropy of sigmoid(y) over positives and negatives."""
    return F.binary_cross_entropy_with_logits(logits, labels)
