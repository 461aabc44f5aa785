#!/usr/bin/env bash
# The benchmark run BENCHMARKS.md quotes: the engine (`hcn bench`) and its peers (PyTorch eager,
# ONNX Runtime; reference/bench_peers.py) on the same SPEC §6 model, stores and requests, one run.
#
#   scripts/bench.sh [public|industrial|all]          (default: all)
#
# Environment (defaults in brackets):
#   PYTHON         python with reference/requirements-bench.txt installed [.venv/bin/python]
#   THREADS        threads of every contender [2]
#   REQUESTS       requests timed by `hcn bench` at batch 1 [200]
#   PEER_REQUESTS  requests timed by each peer [100]
#   ROWS           rows of each generated store [1000000] (SPEC §6)
#   TOP_K          top-k per request [1000]
#   F32=0          skip the F32-store engine figure (needs one more store file per profile)
#   BATCH32=0      skip the engine's batch-32 figure
#   I8=0           skip the engine's figure with an I8 candidate store (`hcn quantize` of the F16
#                  one, made once; issue 13 compares it with the F16 figure of the same run)
#   PEERS_F32=1    also time the peers on the F32 candidate store (off by default: it doubles their time)
# Models and stores are generated once into target/bench-models/<profile>/ (about 0.1 GB for
# public, 0.5 GB for industrial, +50% with F32) and reused. Output: the machine, then one JSON
# line per figure, each prefixed with its profile, on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bench-common.sh
parse_profiles "${1:-all}"
PYTHON=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
REQUESTS=${REQUESTS:-200}
PEER_REQUESTS=${PEER_REQUESTS:-100}
ROWS=${ROWS:-1000000}
TOP_K=${TOP_K:-1000}
F32=${F32:-1}
BATCH32=${BATCH32:-1}
I8=${I8:-1}
PEERS_F32=${PEERS_F32:-0}
MODELS=target/bench-models

if ! "$PYTHON" -c 'import torch, numpy, safetensors, onnx, onnxscript, onnxruntime' 2>/dev/null; then
  cat >&2 <<MSG
$0: '$PYTHON' cannot import torch/numpy/safetensors/onnx/onnxscript/onnxruntime.
Create the venv with
    python3 -m venv .venv && .venv/bin/pip install -r reference/requirements-bench.txt
or point PYTHON=/path/to/python at one that has them.
MSG
  exit 1
fi

# The peers must draw the engine's requests (same splitmix64 stream): checked before any timing.
"$PYTHON" reference/bench_peers.py --self-test >&2

build_engine
print_machine
echo "# peers: $("$PYTHON" -c 'import torch, onnxruntime, platform; print(f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")')"
# Spinning thread pools (OpenMP under PyTorch, ORT's, rayon) degrade badly, and unevenly, when the
# cores are shared: a loaded machine gives figures that compare nothing.
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  # Twice, not `tee /dev/stderr`: tee reopens a redirected stderr's file and truncates it.
  warning="# WARNING: 1-minute load average $load1 > 0.5: the machine is busy, figures are not comparable"
  echo "$warning"
  echo "$warning" >&2
fi

for profile in "${profiles[@]}"; do
  per_request=$(per_request_of "$profile")
  dir=$MODELS/$profile
  ensure_model "$profile"
  if [[ $F32 == 1 && ! -f $dir/candidates-f32.safetensors ]]; then
    echo "# generating $dir/candidates-f32.safetensors" >&2
    "$PYTHON" reference/make_bench_model.py --profile "$profile" --rows "$ROWS" --dtype f32 --out "$dir" --seed 0 \
      --stores candidates --candidates-name candidates-f32.safetensors >&2
  fi
  files=(--model "$dir/model.safetensors" --tokens "$dir/tokens.safetensors")
  common=(--candidates-per-request "$per_request" --threads "$THREADS" --top-k "$TOP_K" --seed 0 --device cpu)

  "$HCN" bench "${files[@]}" --candidates "$dir/candidates.safetensors" "${common[@]}" \
    --requests "$REQUESTS" --batch 1 | tag '"peer": "engine", "store_dtype": "float16", '
  if [[ $BATCH32 == 1 ]]; then
    # 8 batches of 32: whole batches only, so every latency sample is a full batch.
    "$HCN" bench "${files[@]}" --candidates "$dir/candidates.safetensors" "${common[@]}" \
      --requests 256 --batch 32 | tag '"peer": "engine", "store_dtype": "float16", '
  fi
  if [[ $F32 == 1 ]]; then
    "$HCN" bench "${files[@]}" --candidates "$dir/candidates-f32.safetensors" "${common[@]}" \
      --requests "$REQUESTS" --batch 1 | tag '"peer": "engine", "store_dtype": "float32", '
  fi
  if [[ $I8 == 1 ]]; then
    if [[ ! -f $dir/candidates-i8.safetensors ]]; then
      "$HCN" quantize --in "$dir/candidates.safetensors" --out "$dir/candidates-i8.safetensors" >&2
    fi
    "$HCN" bench "${files[@]}" --candidates "$dir/candidates-i8.safetensors" "${common[@]}" \
      --requests "$REQUESTS" --batch 1 | tag '"peer": "engine", "store_dtype": "int8", '
  fi
  "$PYTHON" reference/bench_peers.py --dir "$dir" --candidates-per-request "$per_request" \
    --requests "$PEER_REQUESTS" --threads "$THREADS" --top-k "$TOP_K" --seed 0 --engine "$HCN" \
    2> >(grep -v -e 'torchvision' -e '^\[torch.onnx\]' >&2) | tag ''
  if [[ $F32 == 1 && $PEERS_F32 == 1 ]]; then
    "$PYTHON" reference/bench_peers.py --dir "$dir" --candidates candidates-f32.safetensors \
      --candidates-per-request "$per_request" --requests "$PEER_REQUESTS" --threads "$THREADS" --top-k "$TOP_K" \
      --seed 0 --engine "$HCN" 2> >(grep -v -e 'torchvision' -e '^\[torch.onnx\]' >&2) | tag ''
  fi
done
echo "# load average at the end:$(uptime | sed 's/.*load average://')"
