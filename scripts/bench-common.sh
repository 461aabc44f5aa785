# Sourced by scripts/bench.sh and scripts/serve_bench.sh (not run on its own): what both do
# before timing anything. Expects PYTHON, ROWS, THREADS, TOP_K and MODELS to be set.

# profiles=(…) from the script's argument: public | industrial | all (default).
parse_profiles() {
  case "${1:-all}" in
    public | industrial) profiles=("$1") ;;
    all) profiles=(public industrial) ;;
    *) echo "usage: $0 [public|industrial|all]" >&2; exit 2 ;;
  esac
}

# Builds the engine; HCN is its binary.
build_engine() {
  echo "# building the engine (cargo build --release)" >&2
  cargo build --release >&2
  HCN=${CARGO_TARGET_DIR:-target}/release/hcn
}

# The machine and the build, for the record: lscpu's family and model, since figures compare only
# within one host.
print_machine() {
  local cpu family model
  cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
  family=$(lscpu 2>/dev/null | sed -n 's/^CPU family: *//p' | head -1)
  model=$(lscpu 2>/dev/null | sed -n 's/^Model: *//p' | head -1)
  echo "# machine: ${cpu:-unknown cpu}, family ${family:-?}, model ${model:-?}; nproc $(nproc); $(uname -sr); load average now:$(uptime | sed 's/.*load average://')"
  echo "# engine: $(git describe --always --dirty 2>/dev/null || echo '?'), $(rustc --version 2>/dev/null || echo 'rustc ?'); threads $THREADS, top-k $TOP_K, seed 0, stores $ROWS rows"
}

# Candidates per request of SPEC §6's profile $1.
per_request_of() {
  case "$1" in
    public) echo 10000 ;;
    industrial) echo 50000 ;;
  esac
}

# The bench model of profile $1 (F16 stores of $ROWS rows) in $MODELS/$1, generated once.
ensure_model() {
  local dir=$MODELS/$1
  if [[ ! -f $dir/model.safetensors || ! -f $dir/tokens.safetensors || ! -f $dir/candidates.safetensors ]]; then
    echo "# generating $dir (F16 stores, $ROWS rows)" >&2
    "$PYTHON" reference/make_bench_model.py --profile "$1" --rows "$ROWS" --dtype f16 --out "$dir" --seed 0 >&2
  fi
}

# Prefixes every JSON line of stdin with "profile" (and the extra "key": value pairs given).
tag() {
  sed -u "s/^{/{\"profile\": \"$profile\", ${1:-}/"
}
