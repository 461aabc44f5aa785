#!/usr/bin/env bash
# The service against the engine, in one run (SERVING.md's figures, issue 11's acceptance):
#   scripts/serve_bench.sh [public|industrial|all]
#
# Per profile, on the bench models of scripts/bench.sh (target/bench-models/, generated if
# missing): `hcn bench` draws its seeded requests and writes them (--write-requests), then
# ROUNDS rounds alternate `hcn bench` (batch 1) with one gRPC client sending the same requests
# to `hcn serve` (scripts/grpc_load.py, the official grpcio client), so each ratio compares two
# figures taken a minute apart on this noisy machine; then `hcn bench --batch 32` against
# CLIENTS closed-loop clients (max throughput), and with OPEN=1 an open loop (Poisson) at
# OPEN_LOAD of that max for OPEN_SECONDS. Client and server share this machine's cores.
# Prints JSON lines (each tagged with its profile and round) and a summary line per profile.
#
# Needs PYTHON (default .venv/bin/python) with numpy + safetensors (model generation) and grpcio +
# grpcio-tools (the client): `.venv/bin/pip install -r reference/requirements-bench.txt`.
set -euo pipefail
cd "$(dirname "$0")/.."

which_profiles=${1:-all}
case "$which_profiles" in
  public | industrial) profiles=("$which_profiles") ;;
  all) profiles=(public industrial) ;;
  *) echo "usage: $0 [public|industrial|all]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
ROWS=${ROWS:-1000000}
TOP_K=${TOP_K:-1000}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
OPEN=${OPEN:-0}
OPEN_LOAD=${OPEN_LOAD:-0.7}
OPEN_SECONDS=${OPEN_SECONDS:-60}
MODELS=target/bench-models

if ! "$PYTHON" -c 'import numpy, safetensors, grpc, grpc_tools' 2>/dev/null; then
  echo "$0: '$PYTHON' cannot import numpy/safetensors/grpc/grpc_tools; see the header of this script" >&2
  exit 1
fi
echo "# building the engine (cargo build --release)" >&2
cargo build --release >&2
HCN=${CARGO_TARGET_DIR:-target}/release/hcn
echo "# machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), family $(lscpu | sed -n 's/^CPU family: *//p'), model $(lscpu | sed -n 's/^Model: *//p'); nproc $(nproc)"
echo "# engine: $(git describe --always --dirty 2>/dev/null || echo '?'); threads $THREADS, top-k $TOP_K, rounds $ROUNDS"

server_pid=
stop_server() {
  if [[ -n $server_pid ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

# Prefixes every JSON line of stdin with "profile" and the given extra pairs.
tag() {
  sed -u "s/^{/{\"profile\": \"$profile\", $1/"
}
# The value of key $2 in JSON line $1.
field() {
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

for profile in "${profiles[@]}"; do
  case "$profile" in
    public) per_request=10000 count=400 ;;
    industrial) per_request=50000 count=150 ;;
  esac
  dir=$MODELS/$profile
  if [[ ! -f $dir/model.safetensors || ! -f $dir/tokens.safetensors || ! -f $dir/candidates.safetensors ]]; then
    echo "# generating $dir (F16 stores, $ROWS rows)" >&2
    "$PYTHON" reference/make_bench_model.py --profile "$profile" --rows "$ROWS" --dtype f16 --out "$dir" --seed 0 >&2
  fi
  files=(--model "$dir/model.safetensors" --tokens "$dir/tokens.safetensors" --candidates "$dir/candidates.safetensors")
  common=(--candidates-per-request "$per_request" --threads "$THREADS" --top-k "$TOP_K" --seed 0 --device cpu)
  requests=$dir/requests-$per_request.jsonl

  log=$(mktemp)
  "$HCN" serve "${files[@]}" --grpc 127.0.0.1:0 --http 127.0.0.1:0 --admin 127.0.0.1:0 --threads "$THREADS" \
    > "$log" 2> >(grep -v INFO >&2) &
  server_pid=$!
  for _ in $(seq 300); do
    grep -q '^hcn serve:' "$log" && break
    kill -0 "$server_pid" 2>/dev/null || { echo "$0: hcn serve exited" >&2; exit 1; }
    sleep 0.1
  done
  target=$(sed -n 's/^hcn serve: grpc \([^ ]*\) .*/\1/p' "$log")
  [[ -n $target ]] || { echo "$0: hcn serve did not start" >&2; exit 1; }

  ratios=()
  for round in $(seq "$ROUNDS"); do
    extra=()
    [[ $round == 1 ]] && extra=(--write-requests "$requests")
    b=$("$HCN" bench "${files[@]}" "${common[@]}" --requests 200 --batch 1 "${extra[@]}" 2>/dev/null)
    echo "$b" | tag "\"round\": $round, \"run\": \"bench\", "
    "$PYTHON" scripts/grpc_load.py ping --target "$target" --count 300 | tag "\"round\": $round, "
    c=$("$PYTHON" scripts/grpc_load.py closed --target "$target" --requests-file "$requests" --top-k "$TOP_K" \
      --clients 1 --count "$count")
    echo "$c" | tag "\"round\": $round, "
    ratios+=("$(python3 -c 'import sys; print(round(float(sys.argv[1]) * 1e3 / float(sys.argv[2]), 3))' \
      "$(field "$c" median_ms)" "$(field "$b" median_us)")")
  done

  b32=$("$HCN" bench "${files[@]}" "${common[@]}" --requests 256 --batch 32 2>/dev/null)
  echo "$b32" | tag '"run": "bench", '
  cl=$("$PYTHON" scripts/grpc_load.py closed --target "$target" --requests-file "$requests" --top-k "$TOP_K" \
    --clients "$CLIENTS" --count $((count * 2 / CLIENTS + 1)))
  echo "$cl" | tag ''
  share=$(python3 -c 'import sys; print(round(float(sys.argv[1]) * int(sys.argv[2]) / float(sys.argv[3]), 3))' \
    "$(field "$cl" qps)" "$per_request" "$(field "$b32" candidates_per_s)")
  if [[ $OPEN == 1 ]]; then
    rate=$(python3 -c 'import sys; print(round(float(sys.argv[1]) * float(sys.argv[2]), 1))' "$(field "$cl" qps)" "$OPEN_LOAD")
    "$PYTHON" scripts/grpc_load.py open --target "$target" --requests-file "$requests" --top-k "$TOP_K" \
      --rate "$rate" --seconds "$OPEN_SECONDS" | tag ''
  fi
  stop_server
  echo "{\"profile\": \"$profile\", \"summary\": true, \"one_client_over_bench\": [$(IFS=,; echo "${ratios[*]}")], \"closed_${CLIENTS}_share_of_batch32\": $share}"
done
