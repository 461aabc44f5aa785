#!/usr/bin/env bash
# The one-shot GPU check (issue 14): everything a GPU machine without cargo or network can run,
# prepared here, run there in one call, one report back.
#
#   bash scripts/gpu-check.sh --prepare [--dir DIR]
#       Here, no GPU needed (nvcc from scripts/install-nvcc.sh): builds the release `hcn`
#       (--features cuda), the GPU test binaries (tests/cuda_gpu.rs and tests/executors.rs, with
#       --features cuda,cuda-emulation: they compare the GPU with the CPU emulation of the same
#       kernels) and the store generator (examples/synth_profile.rs), strips them, and puts them
#       with the test fixtures, the report script and a manifest into DIR (default
#       target/gpu-check, git-ignored), whose size it checks (HCN_GPU_CHECK_MAX_MIB, default 48;
#       the device tool carries at most 64 MiB with the tracked tree). A smoke test runs each
#       binary here first.
#
#   bash scripts/gpu-check.sh [--dir DIR] [--out OUT] [--steps a,b,...] [--force]
#       On the GPU machine: runs the steps below in order, each under its own `timeout`, all of
#       them inside one budget (HCN_GPU_CHECK_BUDGET_S, default 420 s; a step that would not fit
#       is recorded as skipped), and writes OUT/gpu-report.json, OUT/gpu-summary.txt and
#       OUT/gpu-logs.tar.gz (every step's log, ncu's reports). OUT defaults to $OUT (the device
#       tool's folder), else target/gpu-check-out. A failing step is recorded and the next one
#       runs; the script exits 0 once the report is written. Without a GPU it records why,
#       runs only the host-side steps and still writes the report (--force runs every step
#       anyway, to exercise this script where there is no GPU). --steps runs only the named
#       steps (a retry of what failed or did not fit).
#
# Steps (run mode), most valuable first:
#   info            machine, driver, GPU, tool versions, the manifest
#   smoke           every binary starts here (shared libraries resolved)
#   gpu_tests       tests/cuda_gpu.rs: every kernel against the emulation, top-k exactness at
#                   50,000, the parity fixtures, the pinned staging, the timing events, the
#                   engine against the f64 reference on the industrial profile (all but the
#                   emulated industrial plan, last step)
#   stores          SPEC §6 industrial model and 1,000,000-row F16 stores, generated here
#                   (HCN_GPU_CHECK_ROWS) — a smaller store would sit in the 60 MB L2
#   bench_b1        hcn bench --device cuda, industrial, batch 1, --kernel-times
#   bench_b64       the same at batch 64
#   ncu_b1, ncu_b64 Nsight Compute speed-of-light + DRAM bytes of one batch's 13 launches
#   memcheck        compute-sanitizer memcheck: the kernel tests and one industrial batch
#   racecheck       compute-sanitizer racecheck: the kernel tests and a small industrial batch
#   initcheck       compute-sanitizer initcheck and synccheck, small
#   executors       tests/executors.rs: the fixtures through every executor, cuda:0 included
#   bench_public    the public profile at batch 1 and 64
#   bench_i8        industrial at batch 1 and 64 with the candidate store quantized to I8
#                   (`hcn quantize`, SPEC §3): attend_i8 is tested above, this times score_mma_i8
#   gpu_industrial_emulated  tests/cuda_gpu.rs's GPU-against-emulation industrial plan (the
#                   emulation takes minutes: last)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SELF="$ROOT/scripts/gpu-check.sh"

ALL_STEPS=(info smoke gpu_tests stores bench_b1 bench_b64 ncu_b1 ncu_b64 memcheck racecheck
    initcheck executors bench_public bench_i8 gpu_industrial_emulated)
# Host-side steps: the ones that still run without a GPU.
HOST_STEPS=(info smoke)

usage() {
    sed -n '2,/^set -uo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

MODE=run
DIR=target/gpu-check
OUTDIR=${OUT:-}
ONLY=
FORCE=0
STEP_IMPL=
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --dir) DIR=$2; shift ;;
        --out) OUTDIR=$2; shift ;;
        --steps) ONLY=$2; shift ;;
        --force) FORCE=1 ;;
        --run-step) MODE=step; STEP_IMPL=$2; shift ;;
        -h | --help) usage ;;
        *) echo "gpu-check: unknown argument $1" >&2; usage ;;
    esac
    shift
done
case "$DIR" in /*) ;; *) DIR="$ROOT/$DIR" ;; esac

# ------------------------------------------------------------------------------------ prepare

prepare() {
    set -e
    local max_mib=${HCN_GPU_CHECK_MAX_MIB:-48}
    echo "== gpu-check --prepare into ${DIR#"$ROOT"/}"
    mkdir -p "$(dirname "$DIR")"
    if ! git check-ignore -q "$DIR"; then
        echo "gpu-check: $DIR is not git-ignored; refusing to fill it" >&2
        exit 1
    fi
    bash scripts/install-nvcc.sh >/dev/null
    # Every executable by the path cargo reports (a later build with other features may relink
    # target/release/hcn: the integration tests build the CLI with theirs).
    local -A exe=()
    local name path json
    collect() {
        while IFS=$'\t' read -r name path; do
            exe[$name]=$path
        done < <(printf '%s\n' "$1" | python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        print(kind + ":" + m["target"]["name"] + "\t" + m["executable"])
')
    }
    # The GPU tests compare with the emulation: they need both features (as scripts/test.sh's
    # `cargo test --release --features cuda,cuda-emulation` builds them).
    json=$(cargo test --release --features cuda,cuda-emulation --no-run \
        --test cuda_gpu --test executors --message-format=json)
    collect "$json"
    # What ships: the CLI with the CUDA executor, no emulation inside (scripts/test.sh's cuda
    # step builds the same), and the store generator.
    json=$(cargo build --release --features cuda --bin hcn --example synth_profile \
        --message-format=json)
    collect "$json"
    for t in test:cuda_gpu test:executors bin:hcn example:synth_profile; do
        if [ -z "${exe[$t]:-}" ] || [ ! -x "${exe[$t]}" ]; then
            echo "gpu-check: cargo did not report the executable $t" >&2
            exit 1
        fi
    done

    rm -rf "$DIR"
    mkdir -p "$DIR/bin"
    # Debug info out (release has debug = 1), symbols kept: a sanitizer's host backtrace names
    # functions.
    strip --strip-debug -o "$DIR/bin/hcn" "${exe[bin:hcn]}"
    strip --strip-debug -o "$DIR/bin/synth_profile" "${exe[example:synth_profile]}"
    strip --strip-debug -o "$DIR/bin/cuda_gpu" "${exe[test:cuda_gpu]}"
    strip --strip-debug -o "$DIR/bin/executors" "${exe[test:executors]}"
    cp -r tests/fixtures "$DIR/fixtures"
    cp scripts/gpu_check_report.py "$DIR/report.py"
    # The report reads formats only a GPU run produces: check it on fabricated ones.
    python3 scripts/gpu_check_report.py selftest

    echo "== smoke test of the prepared binaries (no GPU here: they must start and say so)"
    local tmp
    tmp=$(mktemp -d)
    "$DIR/bin/synth_profile" public "$tmp/p" 2000 >/dev/null
    "$DIR/bin/hcn" bench --device cpu --model "$tmp/p/model.safetensors" \
        --tokens "$tmp/p/tokens.safetensors" --candidates "$tmp/p/candidates.safetensors" \
        --requests 2 --candidates-per-request 100 --threads 1 >/dev/null
    "$DIR/bin/cuda_gpu" --list >"$tmp/cuda_gpu.list"
    "$DIR/bin/executors" --list >"$tmp/executors.list"
    HCN_FIXTURES="$DIR/fixtures" "$DIR/bin/cuda_gpu" --exact topk_on_the_gpu_is_exact \
        >/dev/null 2>&1
    rm -rf "$tmp"

    local bytes tree total
    bytes=$(du -sb "$DIR" | cut -f1)
    # What travels besides it: tracked files and untracked ones git does not ignore.
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) |
        xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
    total=$((bytes + tree))
    python3 - "$DIR" "$bytes" "$tree" <<'PY'
import hashlib, json, os, re, subprocess, sys, time
d, size, tree = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception as e:  # noqa: BLE001 - the manifest records what could not be read
        return f"unavailable: {e}"
def needs(p):
    # The newest glibc / libstdc++ symbol versions a binary asks for (the GPU machine's image
    # must have them).
    syms = out("objdump", "-T", p)
    top = {}
    for tag in ("GLIBC_", "GLIBCXX_"):
        vs = set(re.findall(tag + r"([0-9.]+)", syms))
        if vs:
            top[tag.rstrip("_")] = max(vs, key=lambda v: [int(x) for x in v.split(".") if x])
    return top
files = {}
for base, _, names in os.walk(os.path.join(d, "bin")):
    for n in sorted(names):
        p = os.path.join(base, n)
        files["bin/" + n] = {"bytes": os.path.getsize(p),
                             "sha256": hashlib.sha256(open(p, "rb").read()).hexdigest(),
                             "needs": needs(p)}
manifest = {
    "schema": "hcn-gpu-check-manifest/1",
    "prepared": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": out("git", "rev-parse", "HEAD"),
    "dirty": out("git", "status", "--porcelain", "--untracked-files=no") != "",
    "rustc": out("rustc", "--version"),
    "nvcc": out(".tools/cuda/nvidia/cu13/bin/nvcc", "--version").splitlines()[-1:],
    "host": out("uname", "-srm"),
    "glibc": out("ldd", "--version").splitlines()[:1],
    "folder_bytes": size,
    "tracked_tree_bytes": tree,
    "files": files,
}
json.dump(manifest, open(os.path.join(d, "MANIFEST.json"), "w"), indent=1)
PY
    bytes=$(du -sb "$DIR" | cut -f1)
    total=$((bytes + tree))
    echo "== ${DIR#"$ROOT"/}: $((bytes / 1024)) KiB (tracked tree $((tree / 1024)) KiB)"
    (cd "$DIR" && du -ab . | sort -k2 | awk '{printf "   %9d  %s\n", $1, $2}' | grep -v '/fixtures/.')
    if [ "$bytes" -gt $((max_mib * 1024 * 1024)) ] || [ "$total" -gt $((64 * 1024 * 1024)) ]; then
        echo "gpu-check: the folder is $bytes bytes (limit $max_mib MiB) and with the tracked" \
            "tree $total bytes (the device tool carries 64 MiB)" >&2
        exit 1
    fi
    echo "== ready: carry ${DIR#"$ROOT"/} and run 'bash scripts/gpu-check.sh' on the GPU machine"
}

# ------------------------------------------------------------------------------------ run mode

BIN="$DIR/bin"
WORK=${HCN_GPU_CHECK_WORK:-/tmp/hcn-gpu-check}
ROWS=${HCN_GPU_CHECK_ROWS:-1000000}
# One industrial batch is 2r + 5 = 13 launches (src/cuda/plan.rs, r = 4).
LAUNCHES=13
IND="$WORK/data/industrial"
PUB="$WORK/data/public"

engine_args() { # profile dir
    echo --model "$1/model.safetensors" --tokens "$1/tokens.safetensors" \
        --candidates "$1/candidates.safetensors"
}

need_stores() { # profile dir name
    if [ ! -s "$1/candidates.safetensors" ]; then
        echo "generating the $2 stores ($ROWS rows)"
        "$BIN/synth_profile" "$2" "$1" "$ROWS"
    fi
}

# The kernel tests each sanitizer runs (libtest takes several filters).
KERNEL_TESTS=(every_kernel_matches_the_emulation topk_on_the_gpu_is_exact
    kernel_timing_events_on_the_gpu)

# One step's body, run by `--run-step NAME` under the step's timeout. Output goes to its log.
run_step_impl() {
    local s=$1
    export HCN_FIXTURES="$DIR/fixtures" RUST_BACKTRACE=1
    case "$s" in
        info)
            set +e
            echo "## date"; date -u +%Y-%m-%dT%H:%M:%SZ
            echo "## uname"; uname -a
            echo "## nproc"; nproc
            echo "## memory"; free -g 2>/dev/null | head -2
            echo "## nvidia-smi"; nvidia-smi 2>&1
            echo "## nvidia-smi -q (clocks, memory, performance)"
            nvidia-smi -q -d CLOCK,MEMORY,PERFORMANCE 2>&1 | head -80
            echo "## nvidia-smi --query-gpu"
            nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,pcie.link.gen.current \
                --format=csv 2>&1
            echo "## ncu"; ncu --version 2>&1 | tail -1
            echo "## compute-sanitizer"; compute-sanitizer --version 2>&1 | tail -1
            echo "## nvcc"; nvcc --version 2>&1 | tail -1
            echo "## python3"; python3 --version 2>&1
            echo "## manifest"; cat "$DIR/MANIFEST.json" 2>&1
            return 0
            ;;
        smoke)
            local f missing=0
            for f in "$BIN"/*; do
                echo "## ldd $f"
                ldd "$f" 2>&1
                if ldd "$f" 2>&1 | grep -q 'not found'; then missing=1; fi
            done
            [ "$missing" = 0 ] || { echo "a shared library is missing"; return 1; }
            "$BIN/hcn" --version && "$BIN/cuda_gpu" --list | tail -3 &&
                "$BIN/executors" --list | tail -3
            ;;
        gpu_tests)
            # --nocapture: the tests' own lines (a skip without a GPU, the timing table) are
            # what the report reads.
            "$BIN/cuda_gpu" --test-threads=4 --nocapture \
                --skip executor_matches_the_emulated_plan_on_the_industrial_shape
            ;;
        stores)
            need_stores "$IND" industrial && ls -l "$IND"
            ;;
        bench_b1)
            need_stores "$IND" industrial || return 1
            # shellcheck disable=SC2046
            "$BIN/hcn" bench --device cuda $(engine_args "$IND") --batch 1 --requests 200 \
                --threads 4 --kernel-times
            ;;
        bench_b64)
            need_stores "$IND" industrial || return 1
            # shellcheck disable=SC2046
            "$BIN/hcn" bench --device cuda $(engine_args "$IND") --batch 64 --requests 640 \
                --threads 4 --kernel-times
            ;;
        ncu_b1 | ncu_b64)
            need_stores "$IND" industrial || return 1
            local b=${s#ncu_b} rep="$WORK/ncu/$s"
            mkdir -p "$WORK/ncu"
            # The warm-up batch is skipped; the first timed batch's launches are profiled. If
            # the extra metrics are refused, the section alone.
            local extra=(--metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,sm__warps_active.avg.pct_of_peak_sustained_active)
            local try
            for try in 1 2; do
                # shellcheck disable=SC2046
                ncu --section SpeedOfLight --clock-control none "${extra[@]}" \
                    --launch-skip "$LAUNCHES" --launch-count "$LAUNCHES" \
                    --export "$rep" --force-overwrite \
                    "$BIN/hcn" bench --device cuda $(engine_args "$IND") --batch "$b" \
                    --requests "$b" --threads 4 && [ -s "$rep.ncu-rep" ] && break
                [ "$try" = 2 ] && return 1
                echo "## ncu failed: again without the extra metrics"
                extra=()
            done
            ncu --import "$rep.ncu-rep" --csv --page details --print-units base >"$rep.csv" ||
                ncu --import "$rep.ncu-rep" --csv --page details >"$rep.csv"
            ;;
        memcheck)
            need_stores "$IND" industrial || return 1
            local rc=0
            compute-sanitizer --tool memcheck --error-exitcode 7 --print-limit 50 \
                "$BIN/cuda_gpu" --test-threads=1 "${KERNEL_TESTS[@]}" parity_fixtures_pass_on_the_gpu ||
                rc=$?
            # shellcheck disable=SC2046
            compute-sanitizer --tool memcheck --error-exitcode 7 --print-limit 50 \
                "$BIN/hcn" bench --device cuda $(engine_args "$IND") --batch 2 --requests 2 \
                --threads 4 || rc=$?
            return $rc
            ;;
        racecheck)
            need_stores "$IND" industrial || return 1
            local rc=0
            compute-sanitizer --tool racecheck --error-exitcode 7 --print-limit 50 \
                "$BIN/cuda_gpu" --test-threads=1 "${KERNEL_TESTS[@]}" || rc=$?
            # shellcheck disable=SC2046
            compute-sanitizer --tool racecheck --error-exitcode 7 --print-limit 50 \
                "$BIN/hcn" bench --device cuda $(engine_args "$IND") --batch 2 --requests 2 \
                --candidates-per-request 5000 --threads 4 || rc=$?
            return $rc
            ;;
        initcheck)
            need_stores "$IND" industrial || return 1
            local rc=0
            # shellcheck disable=SC2046
            compute-sanitizer --tool initcheck --error-exitcode 7 --print-limit 50 \
                "$BIN/hcn" bench --device cuda $(engine_args "$IND") --batch 2 --requests 2 \
                --candidates-per-request 5000 --threads 4 || rc=$?
            compute-sanitizer --tool synccheck --error-exitcode 7 --print-limit 50 \
                "$BIN/cuda_gpu" --test-threads=1 every_kernel_matches_the_emulation || rc=$?
            return $rc
            ;;
        executors)
            "$BIN/executors" --test-threads=4 --nocapture
            ;;
        bench_public)
            need_stores "$PUB" public || return 1
            local rc=0
            # shellcheck disable=SC2046
            "$BIN/hcn" bench --device cuda $(engine_args "$PUB") --batch 1 --requests 200 \
                --candidates-per-request 10000 --threads 4 --kernel-times || rc=$?
            # shellcheck disable=SC2046
            "$BIN/hcn" bench --device cuda $(engine_args "$PUB") --batch 64 --requests 640 \
                --candidates-per-request 10000 --threads 4 --kernel-times || rc=$?
            return $rc
            ;;
        bench_i8)
            need_stores "$IND" industrial || return 1
            local c8="$IND/candidates_i8.safetensors" rc=0
            if [ ! -s "$c8" ]; then
                "$BIN/hcn" quantize --in "$IND/candidates.safetensors" --out "$c8" || return 1
            fi
            local args=(--model "$IND/model.safetensors" --tokens "$IND/tokens.safetensors"
                --candidates "$c8")
            "$BIN/hcn" bench --device cuda "${args[@]}" --batch 1 --requests 200 \
                --threads 4 --kernel-times || rc=$?
            "$BIN/hcn" bench --device cuda "${args[@]}" --batch 64 --requests 640 \
                --threads 4 --kernel-times || rc=$?
            return $rc
            ;;
        gpu_industrial_emulated)
            "$BIN/cuda_gpu" --test-threads=2 --nocapture --exact \
                executor_matches_the_emulated_plan_on_the_industrial_shape
            ;;
        *)
            echo "no step $s"
            return 2
            ;;
    esac
}

# The most a step may take (s); the budget may give it less.
step_limit() {
    case "$1" in
        info | smoke) echo 30 ;;
        stores) echo 120 ;;
        bench_b1 | bench_b64) echo 120 ;;
        ncu_b1 | ncu_b64) echo 150 ;;
        memcheck | racecheck) echo 180 ;;
        gpu_tests) echo 240 ;;
        *) echo 150 ;;
    esac
}

in_list() { # word list...
    local w=$1
    shift
    local x
    for x in "$@"; do [ "$x" = "$w" ] && return 0; done
    return 1
}

run_mode() {
    local budget=${HCN_GPU_CHECK_BUDGET_S:-420}
    if [ -z "$OUTDIR" ]; then OUTDIR="$ROOT/target/gpu-check-out"; fi
    mkdir -p "$OUTDIR"
    rm -rf "$WORK/logs" "$WORK/ncu"
    mkdir -p "$WORK/logs" "$WORK/ncu" "$WORK/data"
    local steps_file="$WORK/steps.tsv"
    : >"$steps_file"
    local t0 deadline
    t0=$(date +%s)
    deadline=$((t0 + budget))

    if [ ! -x "$BIN/hcn" ]; then
        echo "gpu-check: no prepared binaries in $DIR (run --prepare first and carry the folder)" >&2
        printf 'prepare\tfail\t1\t-\t-\tno prepared binaries in %s\n' "$DIR" >>"$steps_file"
    fi

    local gpu=0 why=""
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        gpu=1
    elif ! command -v nvidia-smi >/dev/null 2>&1; then
        why="nvidia-smi is not installed"
    else
        why="nvidia-smi lists no GPU: $(nvidia-smi -L 2>&1 | head -1)"
    fi
    echo "gpu-check: GPU present: $gpu${why:+ ($why)}; budget ${budget}s; work in $WORK; report in $OUTDIR"

    local selected=("${ALL_STEPS[@]}")
    if [ -n "$ONLY" ]; then
        IFS=, read -r -a selected <<<"$ONLY"
        # The machine's description heads every report.
        in_list info "${selected[@]}" || selected=(info "${selected[@]}")
    fi
    local s
    for s in "${selected[@]}"; do
        if ! in_list "$s" "${ALL_STEPS[@]}"; then
            printf '%s\tfail\t2\t-\t-\tno such step\n' "$s" >>"$steps_file"
            continue
        fi
        if [ "$gpu" = 0 ] && [ "$FORCE" = 0 ] && ! in_list "$s" "${HOST_STEPS[@]}"; then
            printf '%s\tskipped\t-\t-\t-\tno GPU: %s\n' "$s" "$why" >>"$steps_file"
            continue
        fi
        local now left limit
        now=$(date +%s)
        left=$((deadline - now))
        limit=$(step_limit "$s")
        if [ "$left" -lt 20 ]; then
            printf '%s\tskipped\t-\t-\t-\tout of budget (%ss left)\n' "$s" "$left" >>"$steps_file"
            continue
        fi
        [ "$limit" -gt "$left" ] && limit=$left
        local log="$WORK/logs/$s.log" start end rc status note=""
        start=$(date +%s.%N)
        echo "-- $s (limit ${limit}s)"
        timeout -k 10 "$limit" bash "$SELF" --dir "$DIR" --run-step "$s" >"$log" 2>&1
        rc=$?
        end=$(date +%s.%N)
        case $rc in
            0) status=pass ;;
            124 | 137) status=timeout; note="killed after ${limit}s" ;;
            *) status=fail ;;
        esac
        if [ "$status" = pass ] && grep -q 'skipped, no usable GPU' "$log"; then
            status=no-gpu
            note="the tests ran and skipped: $(grep -m1 -o 'no usable GPU: .*' "$log")"
        fi
        local secs
        secs=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$status" "$rc" "$secs" "$limit" "$note" >>"$steps_file"
        echo "   $status (rc $rc, ${secs}s)"
    done

    local report_ok=0
    local report_py="$ROOT/scripts/gpu_check_report.py"
    [ -f "$report_py" ] || report_py="$DIR/report.py"
    if python3 "$report_py" report --work "$WORK" --dir "$DIR" \
        --out "$OUTDIR" --gpu "$gpu" --why "$why" --budget "$budget" \
        --started "$t0" >"$WORK/logs/report.log" 2>&1; then
        report_ok=1
    else
        # No python (or it failed): the steps alone, still as JSON.
        {
            echo '{"schema": "hcn-gpu-check/1", "report_error": "gpu_check_report.py failed, see logs/report.log", "gpu_present": '"$gpu"', "steps": ['
            awk -F'\t' '{gsub(/"/, "\\\"", $6); printf "%s{\"name\": \"%s\", \"status\": \"%s\", \"rc\": \"%s\", \"seconds\": \"%s\", \"note\": \"%s\"}", (NR > 1 ? ", " : ""), $1, $2, $3, $4, $6}' "$steps_file"
            echo ']}'
        } >"$OUTDIR/gpu-report.json"
        awk -F'\t' '{printf "%-26s %-8s rc %-4s %6ss  %s\n", $1, $2, $3, $4, $6}' "$steps_file" \
            >"$OUTDIR/gpu-summary.txt"
    fi
    tar -czf "$OUTDIR/gpu-logs.tar.gz" -C "$WORK" logs ncu steps.tsv 2>/dev/null
    # The device tool brings back files of at most 16 MiB: keep the logs, drop ncu's reports.
    if [ "$(stat -c %s "$OUTDIR/gpu-logs.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then
        tar -czf "$OUTDIR/gpu-logs.tar.gz" -C "$WORK" logs steps.tsv --exclude='*.ncu-rep' ncu
    fi
    echo
    cat "$OUTDIR/gpu-summary.txt"
    [ "$report_ok" = 1 ] || echo "(report script failed: see logs/report.log in gpu-logs.tar.gz)"
    echo "gpu-check: report in $OUTDIR ($(ls "$OUTDIR" | tr '\n' ' '))"
    return 0
}

case "$MODE" in
    prepare) prepare ;;
    step) run_step_impl "$STEP_IMPL" ;;
    run) run_mode ;;
esac
