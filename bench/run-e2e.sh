#!/usr/bin/env bash
# One-command end-to-end REST benchmark (see PERF.md): builds the release binary, starts the SMSC
# simulator, the gateway and the null-HTTP baseline on loopback, runs `smsgw bench` against the
# null server and then the gateway at several open-loop rates and at max, each bounded in time,
# and prints a summary with the gateway/null ratio measured in this one run.
#
#   bench/run-e2e.sh                      # defaults below
#   DURATION=5s RATES="2000 10000" bench/run-e2e.sh
#
# Knobs (environment): DURATION (per run, default 10s), RATES (open-loop rates, default
# "1000 2000 5000 10000"), CONNECTIONS (64), PIPELINE (1), BENCH_THREADS (1), SHARDS (gateway
# shards and null-server threads, so both servers get the same cores; default nproc, as the
# gateway ships), ESME (500, the pool of the default rules), TEXT_MIX, DLR_PERCENT (100), NO_BUILD=1 (reuse target/release/smsgw),
# OUT (result directory, default a new temp dir), SIM_PORT/HTTP_PORT/NULL_PORT/GRPC_PORT,
# BENCH_BIN (binary for `bench`/`null-http`, default the same release binary),
# STATE_FSYNC (state store fsync mode: batch (default, as shipped) or off).
# Every process it starts is stopped by PID on exit, even on failure or Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${DURATION:-10s}
RATES=${RATES:-"1000 2000 5000 10000"}
CONNECTIONS=${CONNECTIONS:-64}
PIPELINE=${PIPELINE:-1}
BENCH_THREADS=${BENCH_THREADS:-1}
SHARDS=${SHARDS:-$(nproc)}
ESME=${ESME:-500}
TEXT_MIX=${TEXT_MIX:-"gsm7=70,ucs2=20,multipart=10"}
DLR_PERCENT=${DLR_PERCENT:-100}
SIM_PORT=${SIM_PORT:-27750}
HTTP_PORT=${HTTP_PORT:-18088}
NULL_PORT=${NULL_PORT:-18090}
OUT=${OUT:-$(mktemp -d /tmp/smsgw-e2e.XXXXXX)}
mkdir -p "$OUT"

BIN="$ROOT/target/release/smsgw"
# The binary that runs `bench` and `null-http` (same as BIN unless overridden).
BENCH_BIN=${BENCH_BIN:-$BIN}
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Bounded wait for a graceful exit, then force.
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }

wait_port() { # host port what
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "$3 did not open $1:$2 within 10 s; see $OUT/*.log"
    exit 1
}

json_field() { # file field -> first numeric/string value of "field"
    sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n1
}
latency_field() { # file field (inside "latency")
    sed -n "s/^    \"$2\": \([^,]*\),\{0,1\}$/\1/p" "$1" | head -n1
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building release binary"
    cargo build --release --bin smsgw
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }

# Bench copies of the default config: our ports, a private state dir, and link rates high enough
# that the contracted esme_rate is not what the benchmark measures.
sed -e "s|^http_addr = .*|http_addr = \"127.0.0.1:$HTTP_PORT\"|" \
    -e "s|^shards = .*|shards = $SHARDS|" \
    -e "s|^path = \"var/state\"|path = \"$OUT/state\"|" \
    -e "s|^fsync = .*|fsync = \"${STATE_FSYNC:-batch}\"|" \
    -e "s|^grpc_addr = .*|grpc_addr = \"127.0.0.1:${GRPC_PORT:-14044}\"|" \
    config/smsgw.toml >"$OUT/smsgw.toml"
sed -e "s|^port = 2775|port = $SIM_PORT|" \
    -e "s|^esme_rate = .*|esme_rate = 100000|" \
    -e "s|^esme_rate_burst = .*|esme_rate_burst = 100000|" \
    -e "s|^window = .*|window = 200|" \
    -e "s|^max_pending = .*|max_pending = 100000|" \
    config/smpp_rules.toml >"$OUT/smpp_rules.toml"
# Authentication is on (as in production): the demo app, a throw-away server key, one token.
cp config/apps.toml "$OUT/apps.toml"
export SMSGW_JWT_SECRET="${SMSGW_JWT_SECRET:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}"
TOKEN="$("$BIN" token --config "$OUT/smsgw.toml" --rules "$OUT/smpp_rules.toml" --app-id 1)"
"$BIN" check-config --config "$OUT/smsgw.toml" --rules "$OUT/smpp_rules.toml" >"$OUT/check-config.txt" \
    || { cat "$OUT/check-config.txt" >&2; exit 1; }

log "starting smsc-sim on :$SIM_PORT, null-http on :$NULL_PORT, gateway on :$HTTP_PORT (results in $OUT)"
"$BIN" smsc-sim --listen "127.0.0.1:$SIM_PORT" --dlr-percent "$DLR_PERCENT" >"$OUT/sim.log" 2>&1 &
PIDS+=($!)
"$BENCH_BIN" null-http --addr "127.0.0.1:$NULL_PORT" --threads "$SHARDS" >"$OUT/null.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$SIM_PORT" smsc-sim
wait_port 127.0.0.1 "$NULL_PORT" null-http
"$BIN" serve --config "$OUT/smsgw.toml" --rules "$OUT/smpp_rules.toml" >"$OUT/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_port 127.0.0.1 "$HTTP_PORT" gateway

COMMON=(--connections "$CONNECTIONS" --pipeline "$PIPELINE" --threads "$BENCH_THREADS"
        --esme "$ESME" --text-mix "$TEXT_MIX" --duration "$DURATION" --quiet
        --header "Authorization: Bearer $TOKEN" --header "X-App-ID: 1")

run_bench() { # name url rate max_error_rate
    local name=$1 url=$2 rate=$3 max_err=$4
    log "bench $name: rate $rate for $DURATION"
    # PERF_RECORD=1: sample the gateway (call graphs) during its max run, for `perf report`.
    if [ "${PERF_RECORD:-0}" = 1 ] && [ "$name" = gw-max ]; then
        perf record ${PERF_ARGS:--F 499 --call-graph dwarf,8192} -p "$GW_PID" -o "$OUT/perf.data" -- sleep "${DURATION%s}" \
            >"$OUT/perf.log" 2>&1 &
    fi
    set +e
    "$BENCH_BIN" bench --url "$url" --rate "$rate" "${COMMON[@]}" --max-error-rate "$max_err" \
        --json "$OUT/$name.json" --hdr-out "$OUT/$name.hdr" >"$OUT/$name.txt" 2>&1
    local rc=$?
    set -e
    cat "$OUT/$name.txt"
    echo "$rc" >"$OUT/$name.rc"
}

# Wait until the gateway routes (links bound): a short low-rate probe must succeed.
ready=0
for _ in $(seq 1 30); do
    if "$BENCH_BIN" bench --url "http://127.0.0.1:$HTTP_PORT" --rate 20 --requests 10 --connections 1 \
        --esme "$ESME" --quiet --max-error-rate 0 --header "Authorization: Bearer $TOKEN" --header "X-App-ID: 1" >"$OUT/probe.txt" 2>&1; then
        ready=1
        break
    fi
    sleep 1
done
[ "$ready" = 1 ] || { log "gateway never accepted the probe; last attempt:"; cat "$OUT/probe.txt" >&2; exit 1; }

run_bench null-max "http://127.0.0.1:$NULL_PORT" max 1
for rate in $RATES; do
    run_bench "gw-$rate" "http://127.0.0.1:$HTTP_PORT" "$rate" 1
done
run_bench gw-max "http://127.0.0.1:$HTTP_PORT" max 1

null_rate=$(json_field "$OUT/null-max.json" accepted_per_s)
gw_drivers=$(sed -n 's/.*smsgw listening .*drivers=\([a-z_,+]*\).*/\1/p' "$OUT/gateway.log" | head -n1)
{
    echo
    echo "# smsgw end-to-end REST benchmark"
    echo "date        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "revision    $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "machine     nproc=$(nproc) kernel=$(uname -r) bench-driver=$(json_field "$OUT/null-max.json" driver) gateway-drivers=${gw_drivers:-unknown}"
    echo "load avg    at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box skews absolute figures)"
    echo "command     DURATION=$DURATION RATES=\"$RATES\" CONNECTIONS=$CONNECTIONS PIPELINE=$PIPELINE BENCH_THREADS=$BENCH_THREADS SHARDS=$SHARDS bench/run-e2e.sh"
    echo "client      connections=$CONNECTIONS pipeline=$PIPELINE threads=$BENCH_THREADS duration=$DURATION esme=$ESME mix=$TEXT_MIX"
    echo "servers     gateway shards=$SHARDS state-fsync=${STATE_FSYNC:-batch}, null-http threads=$SHARDS, smsc-sim dlr=$DLR_PERCENT%"
    echo
    printf '%-12s %10s %12s %10s %10s %10s %10s %10s %8s\n' run target accepted/s errors p50_us p99_us p99.9_us max_us vs_null
    for name in null-max $(for r in $RATES; do echo "gw-$r"; done) gw-max; do
        f="$OUT/$name.json"
        [ -f "$f" ] || { printf '%-12s (no result, see %s)\n' "$name" "$OUT/$name.txt"; continue; }
        acc=$(json_field "$f" accepted_per_s)
        target=$(json_field "$f" rate_per_s)
        [ "$target" = null ] && target=max
        printf '%-12s %10s %12.0f %10s %10.0f %10.0f %10.0f %10.0f %8s\n' "$name" "$target" "$acc" \
            "$(json_field "$f" errors_total)" "$(latency_field "$f" p50_us)" "$(latency_field "$f" p99_us)" \
            "$(latency_field "$f" p999_us)" "$(latency_field "$f" max_us)" \
            "$(awk -v a="$acc" -v b="$null_rate" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')"
    done
    echo
    echo "Latency is measured from each request's scheduled send time (open loop); 'max' runs are"
    echo "closed loop (latency from actual send). Raw JSON/HDR files: $OUT"
} | tee "$OUT/summary.txt"
