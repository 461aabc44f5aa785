"""Trains HCN (SPEC §1, public profile) and two baselines on the synthetic clicks of ``data.py``,
then exports the HCN model and its item stores in SPEC format.

Run (deterministic for a given ``--threads``; about 7 minutes on one CPU core)::

    .venv/bin/python reference/train.py --out weights/
    .venv/bin/python reference/train.py --out weights/ --check   # recompute heldout metrics from the files

Models (all trained the same way: same samples, same order, same seed, Adam, eq. 9's loss):

* ``hcn`` (exported): ``HCN`` of ``reference/hcn.py``, D=48, n=8, h=4, r=4, ℓ=120/30,
  ``co_interest_concat: [long_aligned, short_aligned, long, short]`` (the co-interest blocks L̃, S̃
  of eq. 4–5 next to L̂, Ŝ), fields age/gender/city + 4 dense, MLP [64], score softmax.
* ``hcn_eq6``: the same with eq. 6's own concat ``[long_aligned, short_aligned, short_aligned]``.
* ``hcn_no_co``: the same without the co-interest network: ``co_interest_concat: [long, short]``
  (X̃ = [L̂; Ŝ] Wcᵀ + bc, slot by slot). Still a valid SPEC model.
* ``mean_pool``: one user vector from the mean of the long and short tokens and the profile
  (``baselines.MeanPool``), y = ⟨x, u⟩.

Training samples carry 3 clicks and 12 non-clicks of one user-moment (``--train-positives``),
held-out samples 1 click and 4 non-clicks. The attention q/k weights start 3× PyTorch's default
(``--init-gain``): at the default the n interests start equal (cosine 0.99) and separate slowly.

Each model has its own item tower (``baselines.ItemTower``), trained jointly. Outputs in ``--out``:

* ``hcn-public.safetensors``: the trained HCN, every tensor F32.
* ``tokens.safetensors``, ``candidates.safetensors``: HCN's item-tower table, F16, U64 ids (not row
  numbers). The two files are identical (one item universe; SPEC §3 allows one file for both, but
  the README and tests name both paths).
* ``heldout.jsonl``: the first ``--heldout-export`` held-out samples, each a SPEC §4 request plus
  ``"labels"`` (0/1 per candidate).
* ``heldout_pytorch.json``: AUC and logloss of the exported HCN on exactly ``heldout.jsonl``,
  computed in float64 from the stored values (F32 weights, F16 item vectors widened exactly).
* ``requests.jsonl`` (5 held-out users, 1,000 candidates each, no labels) and ``expected.jsonl``
  (float64 reference output for them, the fixture format of ``tests/fixtures/README.md``, top 10).
* ``train_report.json``: the data config, the AUC table, timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baselines import ItemTower, MeanPool, bce  # noqa: E402
from data import DENSE, FIELDS, DataConfig, World, batch_arrays  # noqa: E402
from export import quantize, write_model, write_store  # noqa: E402
from hcn import HCN  # noqa: E402

PUBLIC = dict(dim=48, interests=8, heads=4, layers=4, long_len=120, short_len=30)  # SPEC §6
HCN_CONFIG = dict(
    PUBLIC,
    # The co-interest blocks L̃, S̃ plus L̂, Ŝ themselves (a SPEC §1.3 option). Eq. 6's own
    # [L̃; S̃; S̃] is trained too (model ``hcn_eq6``) and reported beside it.
    co_interest_concat=["long_aligned", "short_aligned", "long", "short"],
    user_fields=[{"name": n, "vocab": v} for n, v in FIELDS],
    user_dense=DENSE,
    user_mlp_hidden=[64],
    score="softmax",
)
EQ6_CONFIG = dict(HCN_CONFIG, co_interest_concat=["long_aligned", "short_aligned", "short_aligned"])
NO_CO_CONFIG = dict(HCN_CONFIG, co_interest_concat=["long", "short"])
FIELD_WIDTHS = {"age": 8, "gender": 4, "city": 8}
MODELS = ("hcn", "hcn_eq6", "hcn_no_co", "mean_pool")


# ----------------------------------------------------------------------------------------------
# Models with their item towers


class Ranker(torch.nn.Module):
    """An item tower plus a user model; ``forward`` gives the logits y [B, M] of a batch."""

    def __init__(self, kind: str, features: torch.Tensor, seed: int, residual: bool = False, init_gain: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.kind = kind
        dim = PUBLIC["dim"]
        self.items = ItemTower(features, dim, residual=residual)
        if kind == "hcn":
            self.user = HCN(HCN_CONFIG, FIELD_WIDTHS)
        elif kind == "hcn_eq6":
            self.user = HCN(EQ6_CONFIG, FIELD_WIDTHS)
        elif kind == "hcn_no_co":
            self.user = HCN(NO_CO_CONFIG, FIELD_WIDTHS)
        elif kind == "mean_pool":
            self.user = MeanPool(dim, dict(FIELDS), FIELD_WIDTHS, DENSE)
        else:
            raise ValueError(kind)
        if isinstance(self.user, HCN):
            with torch.no_grad():
                for f in self.user.user.fields.values():  # N(0,1) tables are loud next to Linear's init
                    f.embedding.mul_(0.1)
                if init_gain != 1.0:
                    # PyTorch's Linear init (std 1/sqrt(3·fan_in)) starts every attention nearly
                    # uniform, so all n interests begin equal and separate slowly.
                    for tower in (self.user.long, self.user.short):
                        for layer in tower.layers:
                            layer.q.weight.mul_(init_gain)
                            layer.k.weight.mul_(init_gain)

    def forward(self, b: Dict[str, torch.Tensor], table: torch.Tensor = None) -> torch.Tensor:
        t = self.items.table() if table is None else table
        fields = {n: b[n] for n, _ in FIELDS}
        return self.user(t[b["long"]], b["long_mask"], t[b["short"]], b["short_mask"], fields, b["dense"], t[b["cand"]])


def to_tensors(a: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in a.items() if v is not None}


# ----------------------------------------------------------------------------------------------
# Metrics


def auc(scores, labels) -> float:
    """Pooled ROC AUC: P(score of a positive > score of a negative), ties count 1/2."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(s, kind="mergesort")
    sv = s[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j + 2) / 2.0
        i = j + 1
    npos, nneg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def logloss(logits, labels) -> float:
    """Mean binary cross-entropy of sigmoid(y), computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def predict(model: Ranker, samples: List[dict], batch: int = 500) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        table = model.items.table()
        for i in range(0, len(samples), batch):
            b = to_tensors(batch_arrays(samples[i:i + batch], PUBLIC["long_len"], PUBLIC["short_len"]))
            out.append(model(b, table).numpy())
    model.train()
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------
# Training


def train_one(kind: str, world: World, train: List[dict], valid: List[dict], args) -> Ranker:
    model = Ranker(kind, torch.from_numpy(world.features), seed=args.seed, residual=args.residual, init_gain=args.init_gain)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = len(train) // args.batch
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(args.seed)
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train), generator=gen).tolist()
        run = 0.0
        for i in range(steps_per_epoch):
            b = to_tensors(batch_arrays([train[j] for j in perm[i * args.batch:(i + 1) * args.batch]],
                                        PUBLIC["long_len"], PUBLIC["short_len"]))
            loss = bce(model(b), b["labels"])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            run += loss.item()
        y = predict(model, valid)
        lab = np.array([s["labels"] for s in valid])
        print(f"  {kind} epoch {epoch + 1}/{args.epochs}: train loss {run / steps_per_epoch:.4f}  "
              f"valid AUC {auc(y, lab):.4f}  logloss {logloss(y, lab):.4f}  ({time.time() - t0:.0f}s)", flush=True)
    return model


# ----------------------------------------------------------------------------------------------
# Export


def stored_hcn(model: HCN) -> HCN:
    """float64 copy of the HCN holding exactly what the F32 file stores."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(quantize(p, "f32"))
    return m


def stored_logits(ref: HCN, stored_table: torch.Tensor, samples: List[dict]) -> np.ndarray:
    """y in float64 for ``samples`` from the stored model and the stored (F16) item vectors."""
    out = []
    with torch.no_grad():
        for i in range(0, len(samples), 200):
            b = to_tensors(batch_arrays(samples[i:i + 200], PUBLIC["long_len"], PUBLIC["short_len"]))
            fields = {n: b[n] for n, _ in FIELDS}
            t = stored_table
            # Dense values are multiples of 1/64 (data.py), so the engine's f32 parse is exact.
            y = ref(t[b["long"]], b["long_mask"], t[b["short"]], b["short_mask"], fields, b["dense"].double(), t[b["cand"]])
            out.append(y.numpy())
    return np.concatenate(out)


def as_request(world: World, s: dict, candidates=None) -> dict:
    ids = world.ids
    return {
        "long": [int(ids[r]) for r in s["long"]],
        "short": [int(ids[r]) for r in s["short"]],
        "fields": dict(s["fields"]),
        "dense": list(s["dense"]),
        "candidates": [int(ids[r]) for r in (s["candidates"] if candidates is None else candidates)],
    }


def export(model: Ranker, world: World, heldout: List[dict], args, report: dict) -> None:
    out = args.out
    os.makedirs(out, exist_ok=True)
    hcn = model.user
    write_model(hcn, os.path.join(out, "hcn-public.safetensors"), dtype="f32")
    with torch.no_grad():
        table = model.items.table().double()
    ids = world.ids
    for name in ("tokens.safetensors", "candidates.safetensors"):
        write_store(os.path.join(out, name), table.float(), ids=ids, dtype="f16")
    stored_table = quantize(table, "f16")
    ref = stored_hcn(hcn)

    exp_samples = heldout[: args.heldout_export]
    y = stored_logits(ref, stored_table, exp_samples)
    labels = np.array([s["labels"] for s in exp_samples])
    with open(os.path.join(out, "heldout.jsonl"), "w") as f:
        for s in exp_samples:
            r = as_request(world, s)
            r["labels"] = list(s["labels"])
            f.write(json.dumps(r) + "\n")
    pt = {
        "file": "heldout.jsonl",
        "requests": len(exp_samples),
        "pairs": int(labels.size),
        "positives": int(labels.sum()),
        "auc": auc(y, labels),
        "logloss": logloss(y, labels),
        "computed": "float64 from the stored values (F32 model, F16 item vectors); AUC pooled over all "
                    "(candidate, label) pairs, ties 1/2; logloss = mean BCE of sigmoid(y)",
    }
    with open(os.path.join(out, "heldout_pytorch.json"), "w") as f:
        json.dump(pt, f, indent=1)
        f.write("\n")
    report["heldout_export"] = pt

    # Five demo requests: held-out users (not in heldout.jsonl) with 1,000 distinct candidates,
    # their labelled ones first, then popular-weighted others.
    from gen_fixtures import Store, evaluate  # noqa: E402 (imported late: only needed here)
    rng = np.random.default_rng([world.cfg.seed, 99])
    store = Store(table.numpy(), "f16", [int(x) for x in ids])
    reqs, exps = [], []
    for s in heldout[args.heldout_export: args.heldout_export + 5]:
        cands = list(dict.fromkeys(s["candidates"]))
        while len(cands) < 1000:
            for r in world.popular_items(rng, 1000 - len(cands)):
                if int(r) not in cands:
                    cands.append(int(r))
        req = as_request(world, s, cands[:1000])
        reqs.append(req)
        exps.append(evaluate(ref, store, store, req, 10))
    with open(os.path.join(out, "requests.jsonl"), "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(out, "expected.jsonl"), "w") as f:
        for e in exps:
            f.write(json.dumps(e) + "\n")


def check(out: str) -> dict:
    """Recomputes heldout.jsonl's AUC / logloss from the files alone (float64), as the engine would:
    ids resolved through the stores, unknown behaviors dropped, the most recent ℓ tokens kept."""
    from safetensors.numpy import load_file

    def store(path):
        t = load_file(path)
        return torch.from_numpy(t["vectors"].astype(np.float64)), {int(x): r for r, x in enumerate(t["ids"].tolist())}

    path = os.path.join(out, "hcn-public.safetensors")
    from export import read_model_config
    config = read_model_config(path)
    tensors = load_file(path)
    widths = {k[len("user.fields."):-len(".embedding")]: v.shape[1] for k, v in tensors.items() if k.endswith(".embedding")}
    model = HCN(config, widths).double()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}  # absent biases are zero
    state.update({k: torch.from_numpy(v.astype(np.float64)) for k, v in tensors.items()})
    model.load_state_dict(state)
    tok, tok_index = store(os.path.join(out, "tokens.safetensors"))
    cand, cand_index = store(os.path.join(out, "candidates.safetensors"))
    ys, labels = [], []
    with open(os.path.join(out, "heldout.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            seqs = []
            for key, ell in (("long", config["long_len"]), ("short", config["short_len"])):
                rows = [tok_index[x] for x in r[key] if x in tok_index][-ell:] if ell > 0 else []
                x = torch.zeros(1, max(1, len(rows)), config["dim"], dtype=torch.float64)
                m = torch.zeros(1, x.shape[1], dtype=torch.bool)
                if rows:
                    x[0, : len(rows)] = tok[rows]
                    m[0, : len(rows)] = True
                seqs += [x, m]
            fields = {fd["name"]: torch.tensor([r["fields"][fd["name"]]]) for fd in config["user_fields"]}
            dense = torch.tensor([r["dense"]], dtype=torch.float64)
            with torch.no_grad():
                y = model(*seqs, fields, dense, cand[[cand_index[c] for c in r["candidates"]]].unsqueeze(0))[0]
            ys += y.tolist()
            labels += r["labels"]
    return {"auc": auc(ys, labels), "logloss": logloss(ys, labels), "pairs": len(labels)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train HCN and baselines on synthetic clicks; export HCN (SPEC §2/§3).")
    ap.add_argument("--out", default="weights")
    ap.add_argument("--train", type=int, default=24_000, help="training samples")
    ap.add_argument("--valid", type=int, default=5_000, help="held-out samples for the AUC table")
    ap.add_argument("--heldout-export", type=int, default=400, help="held-out samples written to heldout.jsonl")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results are reproducible for a given count)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--train-positives", type=int, default=3, help="clicks per training sample (same user-moment)")
    ap.add_argument("--train-negatives", type=int, default=4, help="non-clicks per click in training samples")
    ap.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE", help="override a DataConfig field (tuples: a,b)")
    ap.add_argument("--init-gain", type=float, default=3.0, help="scale of the attention q/k weights at init")
    ap.add_argument("--residual", action="store_true", help="item tower: add a free per-item vector to the feature MLP")
    ap.add_argument("--check", action="store_true",
                    help="only recompute --out's heldout.jsonl metrics from its files and compare with heldout_pytorch.json")
    args = ap.parse_args(argv)
    if args.check:
        torch.set_num_threads(args.threads)
        got = check(args.out)
        with open(os.path.join(args.out, "heldout_pytorch.json")) as f:
            want = json.load(f)
        ok = abs(got["auc"] - want["auc"]) < 1e-9 and abs(got["logloss"] - want["logloss"]) < 1e-9
        print(json.dumps({"from_files": got, "heldout_pytorch.json": {k: want[k] for k in ("auc", "logloss", "pairs")},
                          "match": ok}, indent=1))
        return 0 if ok else 1
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    over = {}
    for kv in args.data:
        k, v = kv.split("=", 1)
        cur = getattr(DataConfig(), k)
        over[k] = tuple(type(cur[0])(x) for x in v.split(",")) if isinstance(cur, tuple) else type(cur)(v)
    cfg = DataConfig(**over)
    world = World(cfg)
    train = world.samples(args.train, stream=1, positives=args.train_positives, negatives=args.train_negatives)
    heldout = world.samples(args.valid, stream=2)
    t_data = time.time() - t_start
    print(f"data: {len(train)} train, {len(heldout)} held-out samples ({t_data:.1f}s)", flush=True)
    # The AUC table is over all held-out samples; heldout.jsonl is a prefix of them (never trained on).
    labels = np.array([s["labels"] for s in heldout])
    report = {"data_config": cfg.to_dict(), "args": {k: v for k, v in vars(args).items()}, "models": {},
              "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {args.threads} thread(s)"}
    trained = {}
    for kind in args.models:
        t0 = time.time()
        m = train_one(kind, world, train, heldout, args)
        y = predict(m, heldout)
        report["models"][kind] = {"auc": auc(y, labels), "logloss": logloss(y, labels), "train_s": round(time.time() - t0, 1)}
        print(f"{kind}: AUC {report['models'][kind]['auc']:.4f}  logloss {report['models'][kind]['logloss']:.4f}", flush=True)
        trained[kind] = m
    if "hcn" in trained and not args.no_export:
        export(trained["hcn"], world, heldout, args, report)
        print(f"exported to {args.out}: heldout AUC (float64, stored values) {report['heldout_export']['auc']:.6f}")
    report["total_s"] = round(time.time() - t_start, 1)
    if not args.no_export:
        with open(os.path.join(args.out, "train_report.json"), "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    print(json.dumps(report["models"], indent=1))
    print(f"total {report['total_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
