"""Seeded synthetic click data with the structure HCN is built for (training side, not the engine).

The world
---------
* ``n_items`` items in ``n_groups × clusters_per_group`` latent interest clusters. A cluster's
  centroid is its group's centroid (shared by the group's clusters, so sibling clusters are
  similar) plus its own part; an item's feature vector (``feat_dim`` floats, the "item features"
  the item tower reads) is its cluster centroid plus noise. Items have a Zipf popularity inside
  their cluster and external U64 ids drawn at random below 10^12 (not row numbers).
* Users have a profile: ``age`` (10 buckets), ``gender`` (3), ``city`` (50). Each bucket adds a
  random vector of group affinities; their sum is the user's *demographic prior* over groups. The
  four dense features are two noisy projections of that prior, the log of the history length, and
  pure noise (multiples of 1/64 so an f32 parser reads them exactly).

One sample (a user at one moment)
---------------------------------
* Long-term interests: ``long_interests`` clusters drawn (without replacement) from the
  demographic prior, weights ~ Dirichlet(1). The long history (``long_min..long_max`` items, oldest
  first; longer than the model's ℓ_L = 120 sometimes, so truncation matters) draws each item's
  cluster from those weights (``history_noise`` of them from random popular items instead).
* Short-term interests drift from the long-term ones: ``active`` 1–2 of the long-term clusters,
  chosen uniformly (not by long-term weight), are *active now*, and 1–2 *drift* clusters that are
  not long-term interests (half of them siblings of a long-term one) join them. The drift clusters
  take ``drift_share`` ~ U(0.35, 0.75) of the short history (``short_min..short_max`` items), so
  the short sequence is dominated by drift as often as not.
* Clicks follow the co-interest rule: a positive is an item of an active cluster (a long-term
  interest that is also active short-term) with probability ``p_pos_active``, of a drift cluster
  with ``p_pos_drift``, of a cluster drawn from the demographic prior with ``p_pos_profile``.
  Negatives (``negatives`` per positive) are items of long-term interests that are *not* active
  (``p_neg_long``), of drift clusters (``p_neg_drift``), or popular items of the whole catalogue
  (the rest). So neither "matches the long-term history" nor "matches the session" predicts a
  click alone; their conjunction does, which is what eq. 4–6's co-interest network can express and
  a sum of the two (or a mean-pooled user vector) can only approximate.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``(seed, stream)``: the same
config and stream give the same samples on every machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List

import numpy as np

FIELDS = [("age", 10), ("gender", 3), ("city", 50)]
DENSE = 4


@dataclass(frozen=True)
class DataConfig:
    seed: int = 20261123
    n_items: int = 10_000
    n_groups: int = 8
    clusters_per_group: int = 6
    feat_dim: int = 16
    group_scale: float = 1.0  # std of a group centroid
    cluster_scale: float = 0.8  # std of a cluster's own part of its centroid
    item_noise: float = 0.6  # std of an item's feature noise around its cluster centroid
    zipf: float = 0.9  # popularity ∝ 1 / (rank + 3)^zipf inside a cluster
    profile_scale: float = 0.8  # std of each profile bucket's group-affinity vector
    dense_noise: float = 0.5  # noise of the two informative dense features
    long_interests: tuple = (3, 6)  # inclusive range of the number of long-term clusters
    long_min: int = 60
    long_max: int = 160
    short_min: int = 10
    short_max: int = 40
    history_noise: float = 0.1
    drift_share: tuple = (0.35, 0.75)
    p_pos_active: float = 0.8
    p_pos_drift: float = 0.08
    p_pos_profile: float = 0.12
    negatives: int = 4
    p_neg_long: float = 0.35
    p_neg_drift: float = 0.35

    @property
    def n_clusters(self) -> int:
        return self.n_groups * self.clusters_per_group

    def to_dict(self) -> dict:
        return asdict(self)


class World:
    """The item catalogue and the profile → interest mapping (fixed by ``config.seed``)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        k, g = cfg.n_clusters, cfg.n_groups
        self.cluster_group = np.repeat(np.arange(g), cfg.clusters_per_group)
        group_c = rng.standard_normal((g, cfg.feat_dim)) * cfg.group_scale
        self.centroids = group_c[self.cluster_group] + rng.standard_normal((k, cfg.feat_dim)) * cfg.cluster_scale
        # Every cluster gets n_items / k items (the remainder spread over the first ones).
        self.item_cluster = np.sort(np.arange(cfg.n_items) % k)
        rng.shuffle(self.item_cluster)
        self.features = (self.centroids[self.item_cluster]
                         + rng.standard_normal((cfg.n_items, cfg.feat_dim)) * cfg.item_noise).astype(np.float32)
        # Items ordered by cluster, with one cumulative popularity array whose segment for cluster c
        # runs from c to c + 1: an item of cluster c is then searchsorted(cum, c + u), vectorised.
        order, cum, pop = [], [], np.zeros(cfg.n_items)
        for c in range(k):
            m = np.flatnonzero(self.item_cluster == c)
            m = m[rng.permutation(len(m))]  # popularity rank inside the cluster is random
            p = 1.0 / (np.arange(len(m)) + 3.0) ** cfg.zipf
            p /= p.sum()
            order.append(m)
            cum.append(c + np.cumsum(p))
            pop[m] = p / k
        self.by_cluster = np.concatenate(order)
        self.cluster_cum = np.concatenate(cum)
        self.cluster_cum[np.cumsum([len(m) for m in order]) - 1] = np.arange(1, k + 1)  # exact ends
        self.popularity = pop / pop.sum()
        self.pop_cum = np.cumsum(self.popularity)
        self.pop_cum[-1] = 1.0
        ids: set = set()
        while len(ids) < cfg.n_items:
            ids.update(int(x) for x in rng.integers(1, 10**12, size=cfg.n_items - len(ids)))
        self.ids = np.array(sorted(ids), dtype=np.uint64)
        rng.shuffle(self.ids)  # row i's id is unrelated to i
        self.field_effects = {name: rng.standard_normal((vocab, g)) * cfg.profile_scale for name, vocab in FIELDS}
        self.dense_proj = rng.standard_normal((2, g)) / np.sqrt(g)

    # ------------------------------------------------------------------------------------------

    def items_of(self, rng, clusters: np.ndarray) -> np.ndarray:
        """One item per entry of ``clusters``, by popularity inside the cluster."""
        clusters = np.asarray(clusters, dtype=np.int64)
        u = clusters + rng.random(clusters.shape)
        pos = np.minimum(np.searchsorted(self.cluster_cum, u, side="right"), len(self.by_cluster) - 1)
        return self.by_cluster[pos]

    def popular_items(self, rng, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.pop_cum, rng.random(n), side="right"), self.cfg.n_items - 1)

    def history(self, rng, clusters: np.ndarray, weights: np.ndarray, n: int) -> List[int]:
        """``n`` items: clusters drawn by ``weights``, a ``history_noise`` share of popular items."""
        cw = np.cumsum(weights)
        pick = clusters[np.minimum(np.searchsorted(cw / cw[-1], rng.random(n), side="right"), len(clusters) - 1)]
        items = self.items_of(rng, pick)
        noise = rng.random(n) < self.cfg.history_noise
        items[noise] = self.popular_items(rng, int(noise.sum()))
        return [int(x) for x in items]

    def cluster_prior(self, group_logits: np.ndarray) -> np.ndarray:
        p = np.exp(group_logits - group_logits.max())
        p = p[self.cluster_group]
        return p / p.sum()

    def positive(self, rng, active, active_w, drift, prior) -> int:
        """A clicked item: of an active cluster, a drift cluster, or the demographic prior."""
        cfg = self.cfg
        u = rng.random()
        if u < cfg.p_pos_active:
            return self.history(rng, active, active_w, 1)[0]
        if u < cfg.p_pos_active + cfg.p_pos_drift:
            return int(self.items_of(rng, [drift[rng.integers(0, len(drift))]])[0])
        return self.history(rng, np.arange(cfg.n_clusters), prior, 1)[0]

    def negative(self, rng, long_only, drift) -> int:
        """A shown, not clicked item: of a long-term-only cluster, a drift cluster, or popular."""
        cfg = self.cfg
        u = rng.random()
        if u < cfg.p_neg_long and long_only:
            return int(self.items_of(rng, [long_only[rng.integers(0, len(long_only))]])[0])
        if u < cfg.p_neg_long + cfg.p_neg_drift:
            return int(self.items_of(rng, [drift[rng.integers(0, len(drift))]])[0])
        return int(self.popular_items(rng, 1)[0])

    def sample(self, rng, positives: int = 1, negatives: int = None) -> dict:
        """One user-moment: histories (row numbers, oldest first), profile, candidates, labels.

        ``positives`` clicked items and ``negatives`` (default ``config.negatives``) non-clicked
        ones per positive, all drawn for the same user-moment."""
        negatives = self.cfg.negatives if negatives is None else negatives
        cfg = self.cfg
        k = cfg.n_clusters
        fields = {name: int(rng.integers(0, vocab)) for name, vocab in FIELDS}
        logits = sum(self.field_effects[name][v] for name, v in fields.items())
        prior = self.cluster_prior(logits)

        m_long = int(rng.integers(cfg.long_interests[0], cfg.long_interests[1] + 1))
        long_c = rng.choice(k, size=m_long, replace=False, p=prior)
        long_w = rng.dirichlet(np.ones(m_long))
        n_long = int(rng.integers(cfg.long_min, cfg.long_max + 1))
        long_seq = self.history(rng, long_c, long_w, n_long)

        n_active = min(int(rng.integers(1, 3)), m_long)
        active = rng.choice(long_c, size=n_active, replace=False)
        n_drift = int(rng.integers(1, 3))
        drift: List[int] = []
        while len(drift) < n_drift:
            if rng.random() < 0.5:  # a sibling of a long-term interest: close, but not it
                base = int(long_c[rng.integers(0, m_long)])
                grp = self.cluster_group[base]
                c = int(grp * cfg.clusters_per_group + rng.integers(0, cfg.clusters_per_group))
            else:
                c = int(rng.integers(0, k))
            if c not in long_c and c not in drift:
                drift.append(c)
        share = rng.uniform(*cfg.drift_share)
        short_c = np.concatenate([active, np.array(drift)])
        short_w = np.concatenate([rng.dirichlet(np.ones(n_active)) * (1 - share), rng.dirichlet(np.ones(n_drift)) * share])
        n_short = int(rng.integers(cfg.short_min, cfg.short_max + 1))
        short_seq = self.history(rng, short_c, short_w, n_short)

        long_only = [int(c) for c in long_c if c not in active]
        pos = [self.positive(rng, active, short_w[:n_active], drift, prior) for _ in range(positives)]
        negs = [self.negative(rng, long_only, drift) for _ in range(negatives * positives)]

        proj = self.dense_proj @ logits + rng.standard_normal(2) * cfg.dense_noise
        dense = np.array([proj[0], proj[1], np.log(n_long) - 4.6, rng.standard_normal()])
        dense = np.clip(np.round(dense * 64) / 64, -4, 4)
        return {
            "long": long_seq,
            "short": short_seq,
            "fields": fields,
            "dense": [float(x) for x in dense],
            "candidates": pos + negs,
            "labels": [1] * len(pos) + [0] * len(negs),
        }

    def samples(self, n: int, stream: int, positives: int = 1, negatives: int = None) -> List[dict]:
        """``n`` samples from stream ``stream`` (streams are independent; 0 is the catalogue's)."""
        rng = np.random.default_rng([self.cfg.seed, 1000 + stream])
        out = [self.sample(rng, positives, negatives) for _ in range(n)]
        for s in out:  # the positive's position is random, so nothing can key on position
            perm = rng.permutation(len(s["candidates"]))
            s["candidates"] = [s["candidates"][i] for i in perm]
            s["labels"] = [s["labels"][i] for i in perm]
        return out


def batch_arrays(samples: List[dict], long_len: int, short_len: int) -> Dict[str, np.ndarray]:
    """Padded row-number arrays for a list of samples, applying SPEC §1.1's truncation rule
    (keep the most recent ℓ tokens). Padding is row 0 with mask False."""
    b = len(samples)
    out: Dict[str, np.ndarray] = {}
    for key, ell in (("long", long_len), ("short", short_len)):
        seqs = [s[key][-ell:] if ell > 0 else [] for s in samples]
        width = max(1, max(len(q) for q in seqs))
        rows = np.zeros((b, width), dtype=np.int64)
        mask = np.zeros((b, width), dtype=bool)
        for i, q in enumerate(seqs):
            rows[i, : len(q)] = q
            mask[i, : len(q)] = True
        out[key], out[key + "_mask"] = rows, mask
    for name, _ in FIELDS:
        out[name] = np.array([s["fields"][name] for s in samples], dtype=np.int64)
    out["dense"] = np.array([s["dense"] for s in samples], dtype=np.float32)
    m = max(len(s["candidates"]) for s in samples)
    out["cand"] = np.array([s["candidates"] for s in samples], dtype=np.int64) if all(
        len(s["candidates"]) == m for s in samples) else None
    out["labels"] = np.array([s["labels"] for s in samples], dtype=np.float32) if out["cand"] is not None else None
    return out


def oracle_auc(n_train: int = 6000, n_test: int = 2000) -> Dict[str, float]:
    """How much of the click rule is additive: held-out AUC of small models on *oracle* features
    (the true share of the candidate's cluster in the long and in the short history, as the
    model's ℓ = 120/30 sees them). Documents the data; the trained models never see these."""
    import torch

    world = World(DataConfig())

    def feats(samples):
        x, y = [], []
        for s in samples:
            lc, sc = world.item_cluster[s["long"][-120:]], world.item_cluster[s["short"][-30:]]
            for item, label in zip(s["candidates"], s["labels"]):
                c = world.item_cluster[item]
                fl, fs = float((lc == c).mean()), float((sc == c).mean())
                x.append([fl, fs, float(fl > 0.05), float(fs > 0.1)])
                y.append(label)
        return torch.tensor(x), torch.tensor(y, dtype=torch.float32)

    xtr, ytr = feats(world.samples(n_train, 1))
    xte, yte = feats(world.samples(n_test, 2))
    with_products = lambda x: torch.cat([x, x[:, :1] * x[:, 1:2], x[:, 2:3] * x[:, 3:4]], 1)  # noqa: E731
    out = {}
    for name, f, hidden in (("additive (shares + indicators)", lambda x: x, False),
                            ("+ products long×short", with_products, False),
                            ("MLP (32 hidden) on the same four", lambda x: x, True)):
        torch.manual_seed(0)
        a, b = f(xtr), f(xte)
        m = (torch.nn.Sequential(torch.nn.Linear(a.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
             if hidden else torch.nn.Linear(a.shape[1], 1))
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        for _ in range(1500):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(m(a)[:, 0], ytr).backward()
            opt.step()
        with torch.no_grad():
            s = m(b)[:, 0].numpy().astype(np.float64)
        pos, neg = s[yte.numpy() == 1], s[yte.numpy() == 0]
        out[name] = float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                          / (len(pos) * len(neg)))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(oracle_auc(), indent=1))
