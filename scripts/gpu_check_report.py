#!/usr/bin/env python3
"""The GPU check's report (scripts/gpu-check.sh) and the roofline estimate BENCHMARKS.md quotes.

    python3 scripts/gpu_check_report.py roofline [--profile industrial|public] [--batch 1,64]
        The estimate of every launch site of one batch (src/cuda/plan.rs) on an H200, from the
        kernels as written (kernels/*.cu) and SPEC §6's shapes: compulsory DRAM bytes, FLOPs,
        the time those take at the measured copy bandwidth, the FP32 peak and the tensor-core
        peak, and an estimate of the kernel as written (see `estimate`). Markdown on stdout.

    python3 scripts/gpu_check_report.py report --work W --dir D --out O --gpu 0|1 ...
        Reads the run's steps.tsv and logs under W and writes O/gpu-report.json and
        O/gpu-summary.txt (called by scripts/gpu-check.sh).

Standard library only: it runs with whatever python3 the GPU machine has.
"""

import argparse
import csv
import json
import math
import os
import re
import sys
import time

# ------------------------------------------------------------------------------- the machine

# NVIDIA H200 SXM (KINDS.md, H200.md): a device-to-device copy measured at ~4.3 TB/s (bytes read
# + written); 132 SMs at 1.98 GHz (seen just after load); FP32 = 132 × 128 lanes × 2 × 1.98 GHz;
# dense FP16/BF16 tensor cores measured at ~790 TFLOP/s (datasheet 989); TF32 half of that.
H200 = {
    "hbm_bps": 4.3e12,
    "sms": 132,
    "clock_hz": 1.98e9,
    "fp32_flops": 132 * 128 * 2 * 1.98e9,
    "tc16_flops": 790e12,
    "l2_bytes": 60e6,
}

# SPEC §6, plus what the synthetic model (src/synth.rs) and the plan fix: three co-interest
# concat blocks (the default [L̃; S̃; S̃]), softmax scoring, F16 stores (2 bytes), top-k 1000.
# `*_i8`: the same with the candidate store quantized to I8 (`hcn quantize`; SPEC §3: 1 byte a
# value + a 4-byte scale per row), what gpu-check.sh's `bench_i8` step runs.
PROFILES = {
    "public": {"D": 48, "n": 8, "h": 4, "r": 4, "L": 120, "S": 30, "M": 10_000},
    "industrial": {"D": 128, "n": 16, "h": 4, "r": 4, "L": 500, "S": 50, "M": 50_000},
}
for _name in list(PROFILES):
    PROFILES[_name + "_i8"] = dict(PROFILES[_name], candidates="i8")
CONCAT = 3
STORE_BYTES = 2
TOP_K = 1000

# Cycle costs used by the as-written estimates (Hopper; rough, ±2×): a dependent load that hits
# L2 (the kernels' inputs were written by the previous launch), a shuffle or shared load in a
# dependent chain, one shared-memory (MIO) instruction per SM per cycle, four warp instructions
# issued per SM per cycle.
L2_LATENCY = 300
# A random global load that misses L2 (a candidate row), under load: ≈ 0.8 µs (rough).
HBM_LATENCY = 1600
CHAIN = 30
MIN_KERNEL_US = 2.0  # a launch's device time is rarely under this, whatever its work


ATTEND_KEYS, ATTEND_SLAB, ATTEND_TARGET_BLOCKS = 32, 64, 1024  # kernels/attend.cu, launch.rs


def attend_chunks(max_len, seqs, heads):
    """src/cuda/launch.rs attend_chunks: (chunks, keys per chunk) of one attend launch."""
    tiles = math.ceil(max_len / ATTEND_KEYS)
    if tiles == 0:
        return 0, ATTEND_KEYS
    per = min(tiles, max(1, math.ceil(tiles * seqs * heads / ATTEND_TARGET_BLOCKS)))
    return math.ceil(tiles / per), per * ATTEND_KEYS


def attend_site(users, p):
    """attend.cu (one launch, both towers): a block of 256 per (key chunk, head, sequence); per
    32-key tile and 64-column slab it stages the tokens (F16 → F32) and Q̃'s columns (one L2
    round trip each phase), then ≈ 2nD warp-wide shared loads for the scores and 2nD for Σ p x
    (the SM's shared-memory pipe, one per cycle, bounds it: plain FP32, no tensor cores).
    Blocks of the same SM share that pipe."""
    n, D, h, L, S = p["n"], p["D"], p["h"], p["L"], p["S"]
    chunks, keys = attend_chunks(L, 2 * users, h)
    blocks = chunks * h * 2 * users
    tiles = users * h * (math.ceil(L / ATTEND_KEYS) + math.ceil(S / ATTEND_KEYS))
    slabs = math.ceil(D / ATTEND_SLAB)
    per_tile = 4 * n * D + 2 * slabs * (L2_LATENCY + 2 * 40) + n / 8 * 10 * CHAIN
    # The longest chunk's chain, or the busiest SM's share of the tiles.
    chain = (keys // ATTEND_KEYS) * per_tile
    spread = math.ceil(tiles / H200["sms"]) * 4 * n * D
    flops = users * h * (L + S) * n * D * 4
    bytes_ = users * (L + S) * (D * STORE_BYTES + 4) * h + 4 * blocks * n * (D + 2)
    return blocks, flops, bytes_, max(chain, spread) / H200["clock_hz"], "LDS-bound, FP32 cores"


ATTEND_MMA_MAX_DIM, ATTEND_MMA_MAX_QD, ATTEND_MMA_WARPS = 256, 4096, 4  # kernels/attend_mma.cu


def attend_mma_fits(p):
    """src/cuda/launch.rs attend_mma_fits: D % 16 == 0, 16 ≤ D ≤ 256, n ≤ 64,
    ⌈n/16⌉·16·D ≤ 4096 (the token store F16 or I8: the profiles' tokens are F16)."""
    n, D = p["n"], p["D"]
    return D % 16 == 0 and 16 <= D <= ATTEND_MMA_MAX_DIM and 1 <= n <= 64 and \
        math.ceil(n / 16) * 16 * D <= ATTEND_MMA_MAX_QD


def attend_mma_site(users, p):
    """attend_mma.cu (one launch, both towers): a block of 128 (4 warps) per (key chunk, head,
    sequence), attend_chunks' grid. Per 32-key tile, one after the other (no pipelining): the
    rows' indices (an L2 round trip), the 32 token rows by 16-byte cp.async (a row fetch,
    ≈ HBM_LATENCY: the heads' blocks share the rows, but the first touch is DRAM), S = Q̃ Xᵀ
    on tensor cores (a dependent chain of 2·D/16 mma per accumulator: hi and lo of Q̃), the
    online softmax (a warp per row, n/4 rows per warp, each two 5-shuffle reductions and an
    exp: ≈ 12 dependent steps), acc += P X on tensor cores (a chain of 4 mma), 4 barriers.
    Blocks on an SM overlap their latencies (static shared memory: 43 KB for F16, so 5 blocks
    per SM); the shared-memory pipe (A/B fragment loads, P fragments) is far from saturated.
    The estimate is the longest chunk's chain times the waves, or the busiest SM's shared
    loads, whichever is larger."""
    n, D, h, L, S = p["n"], p["D"], p["h"], p["L"], p["S"]
    chunks, keys = attend_chunks(L, 2 * users, h)
    blocks = chunks * h * 2 * users
    tiles = users * h * (math.ceil(L / ATTEND_KEYS) + math.ceil(S / ATTEND_KEYS))
    mts = math.ceil(n / 16)
    smem = ATTEND_MMA_MAX_QD * 4 + 32 * (ATTEND_MMA_MAX_DIM * STORE_BYTES + 16) + 64 * 33 * 4 + 2048
    per_sm = min(227 * 1024 // smem, 16)
    per_tile = (L2_LATENCY + HBM_LATENCY + 2 * (D // 16) * CHAIN
                + math.ceil(n / ATTEND_MMA_WARPS) * 12 * CHAIN + 4 * CHAIN + 4 * 40)
    setup = 2 * L2_LATENCY + 40
    chain = setup + (keys // ATTEND_KEYS) * per_tile
    waves = math.ceil(blocks / (H200["sms"] * per_sm))
    # Shared-memory instructions per tile and block: S (2 LDS.128 + 2 LDS.32 per k-step and
    # m-tile, per warp), the softmax (2 per row), P·X (8 P loads per m-tile and k-step, 4 LDS.16
    # per feature tile).
    mio = ATTEND_MMA_WARPS * mts * (D // 16) * 4 + 2 * n + \
        ATTEND_MMA_WARPS * mts * 2 * (8 + math.ceil(D / 8 / ATTEND_MMA_WARPS) * 4)
    spread = math.ceil(tiles / H200["sms"]) * mio
    flops = users * h * (L + S) * n * D * 4
    bytes_ = users * (L + S) * (D * STORE_BYTES + 4) * h + 4 * blocks * n * (D + 2)
    return blocks, flops, bytes_, max(waves * chain, spread) / H200["clock_hz"], \
        "latency: row fetch + mma/softmax chains per tile (tensor cores)"


def combine_layer(users, p, last):
    """attend_combine.cu (one launch, both towers): a block of 256 per sequence; the combine
    over the chunks, then Wv, Wo and the next layer's Wq and Wk fold (or the merge), each a
    block-wide product with a thread per output (an in_dim-long FMA chain, L1-resident
    operands: ≈ 4 cycles per FMA per warp, 8 warps per block) and a barrier between them. One
    block per sequence: at batch 1 two SMs do all of it."""
    n, D, h, r, L = p["n"], p["D"], p["h"], p["r"], p["L"]
    chunks, _ = attend_chunks(L, 2 * users, h)
    fmas = h * n * D * chunks * 2 + 2 * n * D * D + (n * r * D * D if last else 2 * n * D * D)
    per_block = fmas / (8 * 32) * 4 + 5 * (L2_LATENCY + 40)
    waves = math.ceil(2 * users / H200["sms"])
    bytes_ = 4 * 2 * (4 * D * D + (r * D * D if last else 0)) + 4 * 2 * users * (h * chunks * n * (D + 2))
    return 2 * users, 2 * users * fmas * 2, bytes_, waves * per_block / H200["clock_hz"], "one block per sequence"


def combine_site(users, p):
    """attend_combine per launch, averaged over the r layers (the last merges instead of forming
    the next layer's Q̃)."""
    r = p["r"]
    rows = [combine_layer(users, p, l + 1 == r) for l in range(r)]
    blocks, why = rows[0][0], rows[0][4]
    return (blocks,) + tuple(sum(x[i] for x in rows) / r for i in (1, 2, 3)) + (why,)


def score_site(users, p):
    """score.cu: a warp per candidate; per interest CH = D/32 (rounded up to a power of two)
    shared loads of X^U, FMAs, a 5-shuffle butterfly and the online softmax. The shared loads
    and shuffles (64 + 80 per candidate at n = 16, D = 128) go through the SM's MIO pipe, one
    per cycle: that bounds it, not DRAM."""
    n, D, M = p["n"], p["D"], p["M"]
    ch = 1 << max(0, math.ceil(math.log2(math.ceil(D / 32))))
    mio = n * (ch + 5)
    blocks = users * math.ceil(M / 256)
    cands = users * M
    flops = 2 * n * D * cands
    bytes_ = cands * (D * STORE_BYTES + 4 + 4) + users * n * D * 4
    per_sm = math.ceil(blocks / H200["sms"]) * 256 * mio
    return blocks, flops, bytes_, per_sm / H200["clock_hz"], f"MIO-bound ({mio} LDS+SHFL/candidate)"


def score_i8_site(users, p):
    """score.cu's I8 path for D a multiple of 16 (score_rows_i8x16): a group of G lanes (D/16
    rounded up to a power of two, at most 32) per candidate, 32/G candidates per warp, each lane
    16·CK widened values from CK 128-bit loads. Per interest a warp issues 16·CK shared loads
    (bank-conflict-free: X^U padded 17/16) and log2(G) shuffles for its 32/G candidates; bytes
    per candidate: D + a 4-byte scale + row index + score."""
    n, D, M = p["n"], p["D"], p["M"]
    chunks = D // 16
    group = min(32, 1 << max(0, math.ceil(math.log2(chunks))))
    ck = math.ceil(chunks / 32)
    mio = n * (16 * ck + int(math.log2(group))) / (32 // group)
    blocks = users * math.ceil(M / 256)
    cands = users * M
    flops = 2 * n * D * cands
    bytes_ = cands * (D + 4 + 4 + 4) + users * n * D * 4
    per_sm = math.ceil(blocks / H200["sms"]) * 256 * mio
    return blocks, flops, bytes_, per_sm / H200["clock_hz"], f"MIO-bound ({mio:.0f} LDS+SHFL/candidate)"


SCORE_MMA_WARPS, SCORE_MMA_PER_BLOCK, SCORE_MMA_STAGES = 4, 256, 3  # kernels/score_mma.cu
SCORE_MMA_BLOCKS_PER_SM = 4  # 48.6 KB (F16) / 42.5 KB (I8) of static shared memory a block


def score_mma_fits(p):
    """src/cuda/launch.rs score_mma_fits: D % 16 == 0, n ≤ 64, ⌈n/8⌉·8·D ≤ 8192."""
    n, D = p["n"], p["D"]
    return D % 16 == 0 and 16 <= D <= 1024 and n <= 64 and math.ceil(n / 8) * 8 * D <= 8192


def score_mma_site(users, p, i8):
    """score_mma.cu: a warp scores 16 candidates at a time on tensor cores (2·(D/16)·⌈n/8⌉
    m16n8k16 mma per tile: hi and lo halves of X^U), rows fetched with 16-byte cp.async in
    chunks of 16 rows × 32 columns through a 3-stage pipeline (2 chunks in flight per warp).
    Bound by DRAM when enough warps are in flight, else by the chain of dependent row fetches
    (each ≈ HBM_LATENCY): per warp 4 tiles × ⌈D/32⌉ chunks, 2 at a time, per wave of
    4 blocks × 4 warps on each SM. Shared loads (A fragments, B as one uint4) and the tensor
    math are far below both. Bytes per candidate: the row (+ a 4-byte scale for I8), its
    index and its score."""
    n, D, M = p["n"], p["D"], p["M"]
    blocks = users * math.ceil(M / SCORE_MMA_PER_BLOCK)
    cands = users * M
    flops = 2 * n * D * cands
    row = D + 4 if i8 else D * STORE_BYTES
    bytes_ = cands * (row + 4 + 4) + users * n * D * 4
    chunks = math.ceil(D / 32)
    tiles_per_warp = SCORE_MMA_PER_BLOCK // 16 // SCORE_MMA_WARPS
    waves = math.ceil(blocks / (H200["sms"] * SCORE_MMA_BLOCKS_PER_SM))
    chain = waves * math.ceil(tiles_per_warp * chunks / (SCORE_MMA_STAGES - 1)) * HBM_LATENCY
    mma = math.ceil(cands / 16) * 2 * (D // 16) * math.ceil(n / 8)
    tc = mma * 16 * 8 * 16 * 2 / H200["tc16_flops"] * H200["clock_hz"]  # SM-cycles, all SMs
    cycles = max(chain, tc / H200["sms"])
    if bytes_ / H200["hbm_bps"] * H200["clock_hz"] >= cycles:
        why = "HBM (tensor cores)"
    else:
        why = "row-fetch latency (cp.async, 2 chunks in flight per warp)"
    return blocks, flops, bytes_, cycles / H200["clock_hz"], why


TOPK_BUCKETS, TOPK_CHUNK, TOPK_CAPACITY = 4096, 1024, 4096  # kernels/topk.cu


def topk_hist_site(users, p):
    """topk_hist (topk.cu): a block of 256 per 1024 scores of a user: zero a 4096-bucket shared
    histogram (128 warp stores), 4 loads and 4 shared atomics per thread (similar scores share
    a bucket: assume 8-way conflicts), then the non-zero buckets added to the user's global
    histogram (128 warp loads, L2 reductions). The SM's shared-memory pipe (one warp op per
    cycle) bounds a large batch; a small one takes one block's latency (two L2 round trips).
    Not a launch, but paid with it: the workspace's memset (histogram + counts + survivors,
    32 KB per user)."""
    m = p["M"]
    blocks = users * math.ceil(m / TOPK_CHUNK)
    mio = 128 + 32 * 8 + 128 + 64
    latency = 2 * L2_LATENCY + 3 * 40 + mio
    cycles = math.ceil(blocks / H200["sms"]) * mio + latency
    bytes_ = users * (m * 4 + TOPK_BUCKETS * 4)
    return blocks, 0, bytes_, cycles / H200["clock_hz"], "shared atomics, blocks side by side"


def topk_compact_site(users, p):
    """topk_compact (topk.cu): same grid; each block scans its user's 4096-bucket histogram
    (16 loads per thread, a block scan: 5 shuffles, 2 barriers, one thread's 16-bucket walk)
    for the threshold bucket, then 4 scores per thread tested, a shared counter, one global
    atomic per block (a dependent L2 round trip) and the survivors' positions stored.
    Survivors at top-k 1000: ≈ k plus the threshold bucket's share."""
    m = p["M"]
    blocks = users * math.ceil(m / TOPK_CHUNK)
    latency = 4 * L2_LATENCY + 10 * CHAIN + 5 * 40
    mio = 4 * 8 + 32
    cycles = math.ceil(blocks / H200["sms"]) * mio + latency
    bytes_ = users * (m * 4 + TOPK_BUCKETS * 4 + 2 * TOP_K * 4)
    return blocks, 0, bytes_, cycles / H200["clock_hz"], "latency: 4 L2 round trips per block"


def topk_select_site(users, p):
    """topk_select (topk.cu): a block of 256 per user sorts its c survivors (≈ 1.4 k at k =
    1000 on the synthetic scores: n2 = 2048 keys of 8 bytes in shared memory) with a bitonic
    sort: log2(n2)·(log2(n2) + 1)/2 stages, each n2/2 compare-exchanges (2 LDS.64 + 2 STS.64,
    counted as 8 shared ops per pair for the 64-bit width) and a barrier; then k positions and
    scores written. One block per SM: the batch takes one block's time. (A user whose survivors
    overflow TOPK_CAPACITY runs the exact one-block radix select instead, ~150 µs: not here.)"""
    n2 = 1 << math.ceil(math.log2(min(TOPK_CAPACITY, int(1.4 * TOP_K))))
    lg = int(math.log2(n2))
    stages = lg * (lg + 1) // 2
    per_stage = (n2 // 2) * 8 / 32 + 40
    cycles = 2 * L2_LATENCY + stages * per_stage + L2_LATENCY
    bytes_ = users * (n2 * 4 + TOP_K * 8)
    return users, 0, bytes_, cycles / H200["clock_hz"], "bitonic sort of the survivors, one block"


def co_fusion_site(users, p):
    """co_fusion.cu: a block of 256 per user: E (n² dots of D), row and column softmax, the
    n·D concat outputs each summing 2n exp-weighted terms, then X̃ = cat Wcᵀ and X^U = [X̃, X̂]
    Wuᵀ as block-wide products (thread per output, FMA chain)."""
    n, D = p["n"], p["D"]
    fmas = n * CONCAT * D * D + 2 * n * D * D
    cycles = D * 8 + n * CHAIN + math.ceil(n * D / 256) * 2 * n * 15 + fmas / (8 * 32) * 4
    flops = users * (6 * n * n * D + 2 * fmas)
    bytes_ = 4 * users * (2 * n * D + n * CONCAT * D + 3 * n * D) + 4 * (CONCAT + 2) * D * D
    return users, flops, bytes_, math.ceil(users / H200["sms"]) * cycles / H200["clock_hz"], "one block per user"


def plan_sites(p, B):
    """The launch sites of one batch of B users, in plan order, with their launch counts."""
    r = p["r"]
    if attend_mma_fits(p):
        out = [("tower.attend", "attend_mma_f16", r, attend_mma_site(B, p))]
    else:
        out = [("tower.attend", "attend_f16", r, attend_site(B, p))]
    out.append(("tower.combine", "attend_combine_f32", r, combine_site(B, p)))
    out.append(("co_fusion", "co_fusion_f32", 1, co_fusion_site(B, p)))
    i8 = p.get("candidates") == "i8"
    if score_mma_fits(p):
        kernel = "score_mma_i8" if i8 else "score_mma_f16"
        out.append(("score", kernel, 1, score_mma_site(B, p, i8)))
    elif i8:
        out.append(("score", "score_i8", 1, score_i8_site(B, p)))
    else:
        out.append(("score", "score_f16", 1, score_site(B, p)))
    out.append(("topk.hist", "topk_hist_f32", 1, topk_hist_site(B, p)))
    out.append(("topk.compact", "topk_compact_f32", 1, topk_compact_site(B, p)))
    out.append(("topk.select", "topk_select_f32", 1, topk_select_site(B, p)))
    return out


def roofline(profile, B):
    """One row per site: per batch (all its launches) bytes, FLOPs, the three floors and the
    as-written estimate, in µs."""
    p = PROFILES[profile]
    rows = []
    for site, kernel, launches, (blocks, flops, bytes_, est_s, why) in plan_sites(p, B):
        t_hbm = bytes_ / H200["hbm_bps"] * 1e6
        t_fp32 = flops / H200["fp32_flops"] * 1e6
        t_tc = flops / H200["tc16_flops"] * 1e6
        # A tensor-core kernel's arithmetic floor is the tensor cores', not FP32's.
        t_math = t_tc if kernel.startswith(("score_mma", "attend_mma")) else t_fp32
        est = max(est_s * 1e6, t_hbm, t_math, MIN_KERNEL_US)
        rows.append({
            "site": site,
            "kernel": kernel,
            "launches": launches,
            "blocks": blocks,
            "bytes": bytes_ * launches,
            "flops": flops * launches,
            "hbm_us": t_hbm * launches,
            "fp32_us": t_fp32 * launches,
            "tc_us": t_tc * launches,
            "estimate_us": est * launches,
            "bound": why,
        })
    return rows


def fmt_bytes(b):
    for unit, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= s:
            return f"{b / s:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_flops(f):
    for unit, s in (("GFLOP", 1e9), ("MFLOP", 1e6), ("KFLOP", 1e3)):
        if f >= s:
            return f"{f / s:.3g} {unit}"
    return f"{f:.0f}"


def fmt_us(u):
    return f"{u:.3g}" if u < 100 else f"{u:.0f}"


def roofline_markdown(profile, B):
    rows = roofline(profile, B)
    lines = [
        f"**{profile}, batch {B}** ({len(rows)} sites, "
        f"{sum(r['launches'] for r in rows)} launches)",
        "",
        "| site | kernel × launches | blocks | DRAM bytes | FLOPs | HBM µs | FP32 µs | TC µs | as written µs | bound by |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['site']} | {r['kernel']} × {r['launches']} | {r['blocks']} | "
            f"{fmt_bytes(r['bytes'])} | {fmt_flops(r['flops'])} | {fmt_us(r['hbm_us'])} | "
            f"{fmt_us(r['fp32_us'])} | {fmt_us(r['tc_us'])} | {fmt_us(r['estimate_us'])} | "
            f"{r['bound']} |"
        )
    tot = {k: sum(r[k] for r in rows) for k in ("bytes", "flops", "hbm_us", "fp32_us", "tc_us", "estimate_us")}
    lines.append(
        f"| **batch** | | | {fmt_bytes(tot['bytes'])} | {fmt_flops(tot['flops'])} | "
        f"{fmt_us(tot['hbm_us'])} | {fmt_us(tot['fp32_us'])} | {fmt_us(tot['tc_us'])} | "
        f"**{fmt_us(tot['estimate_us'])}** | |"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the report

def read_steps(work):
    steps = []
    path = os.path.join(work, "steps.tsv")
    if not os.path.exists(path):
        return steps
    for line in open(path, encoding="utf-8", errors="replace"):
        f = line.rstrip("\n").split("\t")
        f += [""] * (6 - len(f))
        steps.append({
            "name": f[0],
            "status": f[1],
            "rc": f[2],
            "seconds": float(f[3]) if re.match(r"^[0-9.]+$", f[3] or "") else None,
            "limit_s": f[4],
            "note": f[5],
            "log": f"logs/{f[0]}.log",
        })
    return steps


def log_text(work, name):
    path = os.path.join(work, "logs", f"{name}.log")
    try:
        return open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return ""


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def bench_results(text):
    """hcn bench's lines: the SPEC §4 line and the --kernel-times line, per run in the log."""
    runs, cur = [], None
    for v in json_lines(text):
        if "median_us" in v and "kernel_times" not in v:
            cur = {"bench": v}
            runs.append(cur)
        elif "kernel_times" in v and cur is not None:
            cur["kernel_times"] = v
    return runs


def test_results(text):
    """libtest's lines: each test's result, the failures it lists, its summary, and the tests
    that said they skipped for want of a GPU."""
    res = {}
    for m in re.finditer(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", text, re.M):
        res[m.group(1)] = m.group(2)
    for block in re.findall(r"^failures:\n((?:    \S+\n)+)", text, re.M):
        for name in block.split():
            res[name] = "FAILED"
    summary = re.findall(r"^test result: .*$", text, re.M)
    skipped = sorted(set(re.findall(r"(\w+): skipped, no usable GPU", text)))
    return {"tests": res, "summary": summary[-1] if summary else None, "skipped_no_gpu": skipped}


def sanitizer_results(text):
    out = []
    for m in re.finditer(r"=+ (ERROR|RACECHECK) SUMMARY: (.*)", text):
        out.append(m.group(0).strip("= ").strip())
    return out


UNIT_SCALE = {
    "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6, "cycle": None,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9,
}


def ncu_results(path):
    """ncu --csv --page details: one dict per profiled launch (in launch order), selected
    metrics in base units (µs for times, bytes, %)."""
    if not os.path.exists(path):
        return []
    launches = {}
    order = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        lid = row.get("ID")
        if lid is None:
            continue
        if lid not in launches:
            launches[lid] = {
                "kernel": (row.get("Kernel Name") or "").split("(")[0],
                "grid": row.get("Grid Size"),
                "block": row.get("Block Size"),
            }
            order.append(lid)
        name = row.get("Metric Name") or ""
        unit = row.get("Metric Unit") or ""
        raw = (row.get("Metric Value") or "").replace(",", "")
        try:
            val = float(raw)
        except ValueError:
            continue
        if unit in UNIT_SCALE and UNIT_SCALE[unit] is not None:
            val *= UNIT_SCALE[unit]
        key = {
            "Duration": "duration_us",
            "DRAM Throughput": "dram_pct",
            "Memory Throughput": "memory_pct",
            "Compute (SM) Throughput": "sm_pct",
            "dram__bytes_read.sum": "dram_read_bytes",
            "dram__bytes_write.sum": "dram_write_bytes",
            "lts__t_bytes.sum": "l2_bytes",
            "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy_pct",
        }.get(name)
        if key:
            launches[lid][key] = val
    return [launches[i] for i in order]


def site_sequence(p):
    """The plan's launch order (src/cuda/plan.rs) as site names, to label ncu's launches."""
    seq = []
    for _ in range(p["r"]):
        seq += ["tower.attend", "tower.combine"]
    return seq + ["co_fusion", "score", "topk.hist", "topk.compact", "topk.select"]


def ncu_by_site(launches, profile):
    seq = site_sequence(PROFILES[profile])
    if len(launches) != len(seq):
        return None
    sites = {}
    for site, l in zip(seq, launches):
        s = sites.setdefault(site, {"launches": 0, "duration_us": 0.0, "dram_bytes": 0.0})
        s["launches"] += 1
        s["duration_us"] += l.get("duration_us", 0.0)
        s["dram_bytes"] += l.get("dram_read_bytes", 0.0) + l.get("dram_write_bytes", 0.0)
        for k in ("dram_pct", "sm_pct"):
            if k in l:
                s[k] = max(s.get(k, 0.0), l[k])
    return sites


def report(args):
    work, out = args.work, args.out
    os.makedirs(out, exist_ok=True)
    steps = read_steps(work)
    manifest = None
    try:
        manifest = json.load(open(os.path.join(args.dir, "MANIFEST.json")))
    except (OSError, ValueError):
        pass
    info = log_text(work, "info")
    gpu_line = re.search(r"^name, driver_version.*\n(.*)$", info, re.M)
    rep = {
        "schema": "hcn-gpu-check/1",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(args.started)),
        "wall_s": round(time.time() - args.started, 1),
        "budget_s": args.budget,
        "gpu_present": bool(args.gpu),
        "no_gpu_reason": args.why or None,
        "gpu": gpu_line.group(1).strip() if gpu_line else None,
        "manifest": manifest,
        "steps": steps,
        "tests": {},
        "bench": {},
        "ncu": {},
        "sanitizers": {},
        "roofline": {f"{pr}_b{b}": roofline(pr, b) for pr in ("industrial", "public") for b in (1, 64)},
    }
    errors = []

    def guard(what, fn):
        # One unreadable log must not cost the rest of the report.
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{what}: {type(e).__name__}: {e}")

    for s in ("gpu_tests", "executors", "gpu_industrial_emulated"):
        t = log_text(work, s)
        if t:
            guard(s, lambda s=s, t=t: rep["tests"].__setitem__(s, test_results(t)))
    for s, names in (("bench_b1", ["industrial_b1"]), ("bench_b64", ["industrial_b64"]),
                     ("bench_public", ["public_b1", "public_b64"]),
                     ("bench_i8", ["industrial_i8_b1", "industrial_i8_b64"])):
        def bench(s=s, names=names):
            for name, run in zip(names, bench_results(log_text(work, s))):
                rep["bench"][name] = run
        guard(s, bench)
    for s in ("ncu_b1", "ncu_b64"):
        def ncu(s=s):
            launches = ncu_results(os.path.join(work, "ncu", f"{s}.csv"))
            if launches:
                rep["ncu"][s] = {"launches": launches, "by_site": ncu_by_site(launches, "industrial")}
        guard(s, ncu)
    for s in ("memcheck", "racecheck", "initcheck"):
        t = log_text(work, s)
        if t:
            guard(s, lambda s=s, t=t: rep["sanitizers"].__setitem__(s, sanitizer_results(t)))
    for st in steps:
        if st["status"] in ("fail", "timeout") and not st["note"]:
            lines = [x for x in log_text(work, st["name"]).splitlines() if x.strip()]
            # The last line that is not a sanitizer's banner says what went wrong.
            tail = [x for x in lines if not x.startswith("=====")] or lines
            st["note"] = tail[-1][:160] if tail else ""
    text = ""
    try:
        text = summary(rep)
    except Exception as e:  # noqa: BLE001
        errors.append(f"summary: {type(e).__name__}: {e}")
    rep["report_errors"] = errors
    if errors:
        text += "\nreport errors:\n" + "\n".join("  " + e for e in errors) + "\n"
    json.dump(rep, open(os.path.join(out, "gpu-report.json"), "w"), indent=1)
    open(os.path.join(out, "gpu-summary.txt"), "w").write(text)


def summary(rep):
    L = []
    m = rep.get("manifest") or {}
    L.append(f"hcn GPU check {rep['started']}  ({rep['wall_s']} s of a {rep['budget_s']} s budget)")
    L.append(f"GPU: {rep['gpu'] or 'none'}" + (f"  ({rep['no_gpu_reason']})" if rep["no_gpu_reason"] else ""))
    L.append(f"prepared: commit {str(m.get('commit', '?'))[:12]}{' (dirty)' if m.get('dirty') else ''}, {m.get('prepared', '?')}")
    L.append("")
    L.append("steps:")
    for s in rep["steps"]:
        secs = f"{s['seconds']:.0f}s" if s["seconds"] is not None else "-"
        L.append(f"  {s['name']:<24} {s['status']:<8} {secs:>5}  {s['note']}")
    for name, t in rep["tests"].items():
        bad = [k for k, v in t["tests"].items() if v != "ok"]
        L.append(f"{name}: {sum(v == 'ok' for v in t['tests'].values())} ok"
                 + (f", not ok: {', '.join(bad)}" if bad else "")
                 + (f", skipped without GPU: {len(t['skipped_no_gpu'])}" if t["skipped_no_gpu"] else ""))
    for name, s in rep["sanitizers"].items():
        L.append(f"{name}: {'; '.join(s) if s else 'no summary line (see its log)'}")
    for name, run in rep["bench"].items():
        b = run["bench"]
        L.append("")
        L.append(f"{name}: median {b['median_us']:.0f} µs, p99 {b['p99_us']:.0f} µs, "
                 f"{b['candidates_per_s'] / 1e6:.1f} M candidates/s ({b['device']})")
        kt = run.get("kernel_times", {}).get("kernel_times")
        if kt:
            profile, batch = name.rsplit("_b", 1)
            est = {r["site"]: r for r in roofline(profile, int(batch))}
            L.append(f"  device span per batch {kt['span']['median_us']:.0f} µs "
                     f"(roofline estimate {sum(r['estimate_us'] for r in est.values()):.0f}, "
                     f"HBM floor {sum(r['hbm_us'] for r in est.values()):.1f})")
            L.append(f"  {'site':<20} {'kernel':<16} {'µs/batch':>9} {'estimate':>9} {'HBM floor':>9}")
            for k in sorted(kt["kernels"], key=lambda k: -k["per_batch_us"]):
                e = est.get(k["site"], {})
                L.append(f"  {k['site']:<20} {k['kernel']:<16} {k['per_batch_us']:9.1f} "
                         f"{e.get('estimate_us', float('nan')):9.1f} {e.get('hbm_us', float('nan')):9.2f}")
    for name, n in rep["ncu"].items():
        L.append("")
        sites = n.get("by_site")
        if not sites:
            L.append(f"{name}: {len(n['launches'])} launches profiled (not the plan's {len(site_sequence(PROFILES['industrial']))}: see the report)")
            continue
        tot = sum(s["duration_us"] for s in sites.values())
        est = {r["site"]: r for r in roofline("industrial", int(name.rsplit("_b", 1)[1]))}
        L.append(f"{name}: kernels {tot:.0f} µs per batch (ncu durations; roofline estimate "
                 f"{sum(r['estimate_us'] for r in est.values()):.0f} µs)")
        L.append(f"  {'site':<20} {'µs':>8} {'estimate':>8} {'DRAM MB':>8} {'model MB':>8} "
                 f"{'GB/s':>7} {'DRAM %':>6} {'SM %':>6}")
        nan = float("nan")
        for site, s in sorted(sites.items(), key=lambda kv: -kv[1]["duration_us"]):
            e = est.get(site, {})
            gbs = s["dram_bytes"] / s["duration_us"] / 1e3 if s["duration_us"] > 0 else nan
            L.append(f"  {site:<20} {s['duration_us']:8.1f} {e.get('estimate_us', nan):8.1f} "
                     f"{s['dram_bytes'] / 1e6:8.2f} {e.get('bytes', nan) / 1e6:8.2f} {gbs:7.0f} "
                     f"{s.get('dram_pct', nan):6.1f} {s.get('sm_pct', nan):6.1f}")
    return "\n".join(L) + "\n"


def selftest():
    """The report on fabricated logs in the formats the run produces (hcn bench's lines, libtest,
    ncu's CSV, the sanitizers' summaries): what --prepare checks, since the real ones only come
    from a GPU."""
    import tempfile
    tmp = tempfile.mkdtemp()
    work, out = os.path.join(tmp, "work"), os.path.join(tmp, "out")
    for d in ("logs", "ncu"):
        os.makedirs(os.path.join(work, d))
    def write(rel, text):
        with open(os.path.join(work, rel), "w") as f:
            f.write(text)
    write("steps.tsv", "info\tpass\t0\t0.2\t30\t\ngpu_tests\tpass\t0\t41.0\t240\t\n"
          "bench_b1\tfail\t1\t0.1\t120\t\nmemcheck\ttimeout\t124\t180.0\t180\tkilled after 180s\n"
          "racecheck\tskipped\t-\t-\t-\tout of budget (3s left)\n")
    write("logs/info.log", "## nvidia-smi --query-gpu\nname, driver_version, memory.total [MiB]\n"
          "NVIDIA H200, 580.159.04, 143771 MiB\n")
    write("logs/gpu_tests.log", "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ...\n"
          "c said something\nok\n\nfailures:\n\nfailures:\n    b\n    c\n\n"
          "test result: FAILED. 1 passed; 2 failed\n")
    kernels = []
    for site, kernel in zip(site_sequence(PROFILES["industrial"]), ["attend_f16"] * 13):
        if not any(k["site"] == site for k in kernels):
            kernels.append({"count": 1, "kernel": kernel, "max_us": 5.0, "mean_us": 5.0,
                            "median_us": 5.0, "min_us": 5.0, "per_batch_us": 5.0, "site": site,
                            "total_us": 5.0})
    span = {"count": 1, "max_us": 300.0, "mean_us": 300.0, "median_us": 300.0, "min_us": 300.0,
            "total_us": 300.0}
    write("logs/bench_b1.log", "noise\n" + json.dumps({
        "requests": 200, "batch": 1, "threads": 4, "device": "cuda:0", "median_us": 700.0,
        "p90_us": 720.0, "p99_us": 800.0, "candidates_per_s": 7.1e7}) + "\n" + json.dumps({
        "batch": 1, "device": "cuda:0", "median_us": 760.0, "kernel_times": {
            "batches": 1, "dropped": 0, "kernels": kernels, "span": span}}) + "\n")
    head = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
            '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
            '"Metric Value","Rule Name","Rule Type","Rule Description","Estimated Speedup Type",'
            '"Estimated Speedup"')
    rows = ["==PROF== Connected to process 1", head]
    for i, _ in enumerate(site_sequence(PROFILES["industrial"])):
        for name, unit, val in (("Duration", "nsecond", "2,500"), ("DRAM Throughput", "%", "12.5"),
                                ("Compute (SM) Throughput", "%", "40"),
                                ("dram__bytes_read.sum", "byte", "1,000,000"),
                                ("Rule", "", "")):
            rows.append(f'"{i}","1","hcn","h","linear_f32","1","7","(256, 1, 1)","(4, 1, 1)","0",'
                        f'"9.0","GPU Speed Of Light Throughput","{name}","{unit}","{val}","","","","",""')
    write("ncu/ncu_b1.csv", "\n".join(rows) + "\n")
    write("logs/memcheck.log", "========= ERROR SUMMARY: 0 errors\n========= ERROR SUMMARY: 2 errors\n")
    ns = argparse.Namespace(work=work, dir=tmp, out=out, gpu=1, why="", budget=420, started=time.time())
    report(ns)
    rep = json.load(open(os.path.join(out, "gpu-report.json")))
    text = open(os.path.join(out, "gpu-summary.txt")).read()
    assert rep["report_errors"] == [], rep["report_errors"]
    assert rep["gpu"] == "NVIDIA H200, 580.159.04, 143771 MiB", rep["gpu"]
    assert rep["tests"]["gpu_tests"]["tests"] == {"a": "ok", "b": "FAILED", "c": "FAILED"}
    assert rep["bench"]["industrial_b1"]["bench"]["median_us"] == 700.0
    assert len(rep["bench"]["industrial_b1"]["kernel_times"]["kernel_times"]["kernels"]) == 7
    n = rep["ncu"]["ncu_b1"]
    assert len(n["launches"]) == 13 and n["launches"][0]["duration_us"] == 2.5, n["launches"][0]
    assert n["by_site"]["tower.attend"]["launches"] == 4
    assert n["by_site"]["score"]["dram_bytes"] == 1e6
    assert rep["sanitizers"]["memcheck"] == ["ERROR SUMMARY: 0 errors", "ERROR SUMMARY: 2 errors"]
    assert [s["status"] for s in rep["steps"]] == ["pass", "pass", "fail", "timeout", "skipped"]
    for want in ("industrial_b1: median 700 µs", "ncu_b1: kernels 32 µs", "tower.attend",
                 "score                     2.5      6.5     1.00    13.21     400",
                 "not ok: b, c", "memcheck: ERROR SUMMARY: 0 errors"):
        assert want in text, (want, text)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    print("gpu_check_report selftest: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("roofline")
    r.add_argument("--profile", choices=sorted(PROFILES), action="append")
    r.add_argument("--batch", default="1,64")
    g = sub.add_parser("report")
    g.add_argument("--work", required=True)
    g.add_argument("--dir", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--gpu", type=int, default=0)
    g.add_argument("--why", default="")
    g.add_argument("--budget", type=int, default=0)
    g.add_argument("--started", type=float, default=time.time())
    sub.add_parser("selftest")
    a = ap.parse_args()
    if a.cmd == "selftest":
        selftest()
    elif a.cmd == "roofline":
        for pr in a.profile or ["industrial", "public"]:
            for b in a.batch.split(","):
                print(roofline_markdown(pr, int(b)))
                print()
    else:
        report(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
