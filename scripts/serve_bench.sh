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

source scripts/bench-common.sh
parse_profiles "${1:-all}"
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
build_engine
print_machine
echo "# rounds $ROUNDS"

server_pid=
stop_server() {
  if [[ -n $server_pid ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

# The value of key $2 in JSON line $1.
field() {
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

for profile in "${profiles[@]}"; do
  per_request=$(per_request_of "$profile")
  case "$profile" in
    public) count=400 ;;
    industrial) count=150 ;;
  esac
  dir=$MODELS/$profile
  ensure_model "$profile"
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
