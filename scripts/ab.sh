#!/usr/bin/env bash
# Alternated A/B timing of `hcn bench` on a noisy host: the variants run one after the other,
# round after round, so the host's slow and fast phases (minutes long on these VMs) fall on both.
# Compare only within one run; read the rounds pairwise, not one median against another.
#
#   scripts/ab.sh ROUNDS 'LABEL=COMMAND PREFIX' ... -- HCN-BENCH-ARGS...
#
# Each variant is a label and what runs `hcn` (a binary, optionally with env or flags after it);
# the bench arguments are shared. Prints one line per round: each variant's median µs and, from
# `--floors` (added here), its user and score stage medians. Example (two builds, then a flag):
#
#   scripts/ab.sh 4 'old=/tmp/hcn-old' 'new=target/release/hcn' -- \
#     --model M --tokens T --candidates C --candidates-per-request 50000 --top-k 1000
#   scripts/ab.sh 4 'file=target/release/hcn' 'huge=target/release/hcn --huge-pages' -- ...
set -euo pipefail
rounds=${1:?rounds}
shift
variants=()
while [[ $# -gt 0 && $1 != -- ]]; do
  variants+=("$1")
  shift
done
[[ $# -gt 0 ]] && shift
[[ ${#variants[@]} -ge 1 ]] || { echo "usage: $0 ROUNDS 'LABEL=CMD' ... -- BENCH-ARGS" >&2; exit 2; }
echo "# $(lscpu | sed -n 's/^Model name: *//p' | head -1) (family $(lscpu | sed -n 's/^CPU family: *//p'), model $(lscpu | sed -n 's/^Model: *//p')); load:$(uptime | sed 's/.*load average://')"
for r in $(seq "$rounds"); do
  line="round $r:"
  for v in "${variants[@]}"; do
    label=${v%%=*}
    read -r -a cmd <<<"${v#*=}"
    out=$("${cmd[0]}" bench "${cmd[@]:1}" "$@" --floors 2>/dev/null)
    med=$(head -1 <<<"$out" | grep -o '"median_us":[0-9.]*' | cut -d: -f2)
    user=$(tail -1 <<<"$out" | grep -o '"user":[0-9.]*' | cut -d: -f2)
    score=$(tail -1 <<<"$out" | grep -o '"score":[0-9.]*' | cut -d: -f2)
    line+=$(printf '  %s %.0f (user %.0f, score %.0f)' "$label" "$med" "$user" "$score")
  done
  echo "$line"
done
