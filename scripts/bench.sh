#!/usr/bin/env bash
# Side-by-side benchmark: Muster (`muster dev`, release, SQLite) against the Node
# baseline hub, with the same muster-bench, on this machine, over loopback.
#
# For each round, and for each scenario, a fresh Muster hub and a fresh Node hub are
# started (in alternating order), the scenario runs against each with --hub-pid, and the
# hub is stopped. The raw --json outputs go to target/bench/<timestamp>/, and
# scripts/bench_report.py writes docs/benchmarks.md from them.
#
# Knobs (environment):
#   BENCH_ROUNDS=3         rounds (each scenario once per hub per round)
#   BENCH_QUICK=1          small counts, 1 round: checks the script end to end in minutes
#   BENCH_ONLY="idle-clients storm"   run only these scenarios (names below)
#   BENCH_MAX_MINUTES=45   stop starting new runs after this long (the report says so)
#   MUSTER_BASELINES=DIR   where the Node baseline lives (default: ../shared/baselines
#                          next to the project root)
#   BENCH_OUT=DIR          results directory; BENCH_DOC=FILE  the report to write
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASELINES=${MUSTER_BASELINES:-$(cd "$(dirname "$0")/../.." && pwd)/shared/baselines}
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then ROUNDS=${BENCH_ROUNDS:-1}; else ROUNDS=${BENCH_ROUNDS:-3}; fi
MAX_MINUTES=${BENCH_MAX_MINUTES:-45}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${BENCH_OUT:-$ROOT/target/bench/$STAMP}
DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release

# Each scenario: name | seconds the invocation may take (hard kill after) | arguments.
# The outer bound is the bench's own bound plus its 60 s grace and a margin.
if [ "$QUICK" = 1 ]; then
    SCENARIOS=(
        "roundtrip|120|roundtrip --rate 200 --rate 500 --duration 2s --max-duration 2s --concurrency 1,16"
        "output|120|output --bytes 8388608"
        "idle-clients|150|idle --kind client --count 500 --timeout 60s"
        "idle-agents|150|idle --kind agent --count 500 --timeout 60s"
        "fanout|300|fanout --subscribers 50 --rate 20 --rate 100 --duration 2s"
        "job-200|150|job --agents 200 --timeout 60s"
        "job-500|150|job --agents 500 --timeout 60s"
        "storm|150|storm --count 500 --timeout 60s"
        "echo|120|echo --keys 200 --flood-bytes 8388608 --timeout 60s"
    )
else
    SCENARIOS=(
        "roundtrip|300|roundtrip --rate 1000 --rate 2000 --rate 4000 --duration 5s --max-duration 5s --concurrency 1,8,32,128,512,1000"
        "output|180|output --bytes 62914560"
        "idle-clients|330|idle --kind client --count 15000 --timeout 240s"
        "idle-agents|390|idle --kind agent --count 15000 --timeout 300s"
        "fanout|480|fanout --subscribers 1000 --rate 100 --rate 300 --rate 600 --rate 1000 --duration 5s"
        "job-200|210|job --agents 200 --timeout 120s"
        "job-1000|270|job --agents 1000 --timeout 180s"
        "job-3000|330|job --agents 3000 --timeout 240s"
        "job-10000|480|job --agents 10000 --timeout 390s"
        "storm|480|storm --count 15000 --timeout 390s"
        "echo|240|echo --keys 2000 --flood-bytes 104857600 --timeout 180s"
    )
fi

# Scenarios the Node baseline cannot run (it has no sessions): Muster only.
MUSTER_ONLY=" echo "

# Seconds to wait for a hub to print its address, and for it to stop.
HUB_START_TIMEOUT=30
HUB_STOP_TIMEOUT=10

SCRIPT_START=$(date +%s)
log() { printf '%s bench.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

command -v cargo >/dev/null || die "cargo not found"
command -v node >/dev/null || die "node not found; the baseline hub needs it"
command -v python3 >/dev/null || die "python3 not found; the report needs it"
[ -f "$BASELINES/muster-node-hub/hub.js" ] || die "no Node baseline at $BASELINES (set MUSTER_BASELINES)"

log "building muster and muster-bench (release)"
(cd "$ROOT" && cargo build --release --locked -p muster -p muster-bench)
if [ ! -d "$BASELINES/node_modules" ]; then
    log "installing the Node baseline's dependencies (npm ci)"
    (cd "$BASELINES" && npm ci --no-audit --no-fund)
fi

mkdir -p "$OUT"
log "results in $OUT"
for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r name _ args <<<"$entry"
    echo "$name|$args"
done >"$OUT/scenarios.txt"
python3 - "$OUT/meta.json" "$ROUNDS" "$QUICK" "$ROOT" <<'PY'
import hashlib, json, os, platform, subprocess, sys, time
path, rounds, quick, root = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
# How fast one core of this machine is right now, so runs on different days
# can be compared: SHA-256 of 64 MiB, best of three.
block = bytes(64 << 20)
def hash_seconds():
    start = time.perf_counter()
    hashlib.sha256(block).digest()
    return time.perf_counter() - start
cpu_ref = round(len(block) / 1e6 / min(hash_seconds() for _ in range(3)))
mem_kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
def git(*args):
    try:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None
json.dump({
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "rounds": rounds, "quick": quick,
    "nproc": os.cpu_count(), "mem_gib": round(mem_kib / 1024 / 1024, 1),
    "kernel": platform.release(), "commit": git("rev-parse", "--short", "HEAD"),
    "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
    "cpu_ref_mb_s": cpu_ref,
    "open_files": int(subprocess.run(["sh", "-c", "ulimit -n"], capture_output=True, text=True).stdout.strip() or 0),
}, open(path, "w"), indent=2)
PY

HUB_PID=""
HUB_DIR=""
HUB_URL=""
HUB_TOKEN=""

stop_hub() {
    if [ -n "$HUB_PID" ] && kill -0 "$HUB_PID" 2>/dev/null; then
        kill -TERM "$HUB_PID" 2>/dev/null || true
        for _ in $(seq $((HUB_STOP_TIMEOUT * 10))); do
            kill -0 "$HUB_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$HUB_PID" 2>/dev/null || true
        wait "$HUB_PID" 2>/dev/null || true
    fi
    if [ -n "$HUB_DIR" ]; then rm -rf "$HUB_DIR"; fi
    HUB_PID="" HUB_DIR="" HUB_URL="" HUB_TOKEN=""
}
trap stop_hub EXIT
trap 'stop_hub; exit 130' INT TERM

# Waits for MUSTER_HUB= and MUSTER_TOKEN= lines in $1 while $HUB_PID lives.
await_hub_lines() {
    local out=$1
    for _ in $(seq $((HUB_START_TIMEOUT * 10))); do
        if grep -q '^MUSTER_TOKEN=' "$out" 2>/dev/null && grep -q '^MUSTER_HUB=' "$out"; then
            HUB_URL=$(sed -n 's/^MUSTER_HUB=//p' "$out" | head -n1)
            HUB_TOKEN=$(sed -n 's/^MUSTER_TOKEN=//p' "$out" | head -n1)
            return 0
        fi
        kill -0 "$HUB_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# start_hub KIND LOGPREFIX: a fresh hub; sets HUB_PID, HUB_URL, HUB_TOKEN.
start_hub() {
    local kind=$1 prefix=$2
    if [ "$kind" = muster ]; then
        HUB_DIR=$(mktemp -d -t muster-bench-hub.XXXXXX)
        # The rate limits are off: the scenarios measure throughput from one key
        # and few connections, and the Node baseline has no limits.
        "$BIN/muster" dev --listen 127.0.0.1:0 --data-dir "$HUB_DIR" \
            --rate-limit-messages 0 --rate-limit-commands 0 >"$prefix.hub.out" 2>"$prefix.hub.log" &
    else
        local port
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        node "$BASELINES/muster-node-hub/hub.js" "$port" >"$prefix.hub.out" 2>"$prefix.hub.log" &
    fi
    HUB_PID=$!
    await_hub_lines "$prefix.hub.out"
}

START=$(date +%s)
for round in $(seq "$ROUNDS"); do
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r name limit args <<<"$entry"
        if [ -n "${BENCH_ONLY:-}" ] && [[ " $BENCH_ONLY " != *" $name "* ]]; then continue; fi
        # Alternate which hub goes first, so neither always runs on a warmer machine.
        if [ $((round % 2)) = 1 ]; then hubs="muster node"; else hubs="node muster"; fi
        if [[ "$MUSTER_ONLY" == *" $name "* ]]; then hubs="muster"; fi
        for hub in $hubs; do
            prefix="$OUT/r$round-$name-$hub"
            if [ $(( $(date +%s) - START )) -ge $((MAX_MINUTES * 60)) ]; then
                echo "skipped: past BENCH_MAX_MINUTES=$MAX_MINUTES" >"$prefix.skipped"
                log "round $round $name $hub: skipped (past $MAX_MINUTES minutes)"
                continue
            fi
            if ! start_hub "$hub" "$prefix"; then
                echo "the hub did not start within ${HUB_START_TIMEOUT}s" >"$prefix.err"
                log "round $round $name $hub: the hub did not start"
                stop_hub
                continue
            fi
            log "round $round $name $hub (pid $HUB_PID, $HUB_URL)"
            set +e
            # shellcheck disable=SC2086 # $args holds several words on purpose
            MUSTER_HUB=$HUB_URL MUSTER_TOKEN=$HUB_TOKEN timeout --kill-after=10 "$limit" \
                "$BIN/muster-bench" --json --hub-pid "$HUB_PID" $args >"$prefix.json" 2>"$prefix.err"
            code=$?
            set -e
            echo "$code" >"$prefix.exit"
            case $code in
                0) ;;
                2) log "  finished with failures (exit 2)" ;;
                124|137) log "  killed after ${limit}s" ;;
                *) log "  failed (exit $code): $(tail -n1 "$prefix.err")" ;;
            esac
            stop_hub
        done
    done
done

log "writing $DOC"
python3 "$ROOT/scripts/bench_report.py" "$OUT" "$DOC"
log "done in $(( ($(date +%s) - SCRIPT_START) / 60 )) min (runs: $(( ($(date +%s) - START) / 60 )) min); raw results in $OUT"
