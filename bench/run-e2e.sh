#!/usr/bin/env bash
# One-command end-to-end benchmark (see PERF.md): builds the release binary, starts the SMSC
# simulator, then per I/O driver the gateway and the null-HTTP baseline on loopback, and runs
# `smsgw bench` against the null server (max) and the gateway (several open-loop rates, max,
# half of that max, and batch submits), each bounded in time. Prints one summary table with
# every run as a ratio to the null baseline measured with the same driver in this one run,
# plus the gateway's idle RSS.
#
#   bench/run-e2e.sh                                    # defaults below
#   DURATION=5s RATES="2000 10000" DRIVERS="io_uring epoll" bench/run-e2e.sh
#
# Knobs (environment):
#   DURATION (per run, default 10s); RATES (open-loop msg/s, default "1000 2000 5000 10000");
#   HALF=1 (also run at half of the measured max, for "latency at half load"; 0 to skip);
#   NULL=1 (the null-HTTP baseline at max; 0 to skip it when only gateway runs are compared);
#   BATCH (batch sizes for `--batch` runs at max, default "100 1000"; "none" to skip);
#   BATCH_CONNECTIONS (connections for batch runs, default 8);
#   GRPC=1 (gRPC unary and streaming runs at max against grpc_addr; 0 to skip), GRPC_CONNECTIONS
#   (default 8) x GRPC_PIPELINE (calls in flight per connection, default 8): as many
#   requests in flight as the REST runs' 64 connections;
#   DRIVERS ("io_uring", "epoll" or both, default "io_uring": epoll = MONOIO_FORCE_LEGACY_DRIVER=1
#   for the gateway and the null server; the bench client keeps its default driver);
#   CONNECTIONS (64), PIPELINE (1), BENCH_THREADS (1), SHARDS (gateway shards = null-server
#   threads, default nproc), ESME (500, the pool of the default rules), TEXT_MIX, DLR_PERCENT
#   (100), NO_BUILD=1 (reuse target/release/smsgw), OUT (result directory, default a new temp
#   dir), SIM_PORT/HTTP_PORT/NULL_PORT/GRPC_PORT, GW_BIN (binary for `serve`, default the
#   release binary: set it to compare two builds), BENCH_BIN (binary for `bench`/`null-http`/
#   `smsc-sim`, default the release binary), GW_CONFIG / GW_RULES (the config files the bench
#   copies are made from, default config/smsgw.toml and config/smpp_rules.toml: an older
#   GW_BIN needs the config of its own revision), STATE_FSYNC (batch (default, as shipped) or off),
#   STATE_BACKEND (embedded (default, as shipped) or memory: the NOT durable in-memory store, the
#   "state costs ~nothing" baseline; it also sets [state] ttl_s = 60 and memory_max_records =
#   4000000 so that the runs' records expire and stay under the bound, ~1 KiB each),
#   STATE_ENGINE (embedded backend only: unset = the config's engine (journal as shipped),
#   journal, or writer: the single fjall writer thread engine, to compare),
#   PERF_RECORD=1 (perf-record the gateway during each max run; PERF_ARGS overrides the
#   perf options).
# Every process it starts is stopped by PID on exit, even on failure or Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${DURATION:-10s}
RATES=${RATES:-"1000 2000 5000 10000"}
HALF=${HALF:-1}
NULL=${NULL:-1}
BATCH=${BATCH:-"100 1000"}
[ "$BATCH" = none ] && BATCH=""
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-8}
GRPC=${GRPC:-1}
GRPC_CONNECTIONS=${GRPC_CONNECTIONS:-8}
GRPC_PIPELINE=${GRPC_PIPELINE:-8}
GRPC_PORT=${GRPC_PORT:-14044}
DRIVERS=${DRIVERS:-io_uring}
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
GW_BIN=${GW_BIN:-$BIN}
BENCH_BIN=${BENCH_BIN:-$BIN}
GW_CONFIG=${GW_CONFIG:-config/smsgw.toml}
GW_RULES=${GW_RULES:-config/smpp_rules.toml}
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

stop_pid() { # pid (a child of this script): TERM, bounded wait, KILL; reaped before return
    local pid=$1 state
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || echo gone)
        # An exited child stays a zombie (and "alive" for kill -0) until it is reaped.
        if [ "$state" = gone ] || [ "$state" = Z ]; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# json_field, latency_field
source "$ROOT/bench/lib.sh"
rss_kib() { # pid -> VmRSS in KiB
    sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB$/\1/p' "/proc/$1/status" 2>/dev/null || echo 0
}

thread_ticks() { # pid -> "thread-name ticks" per thread name (utime + stime, summed)
    local f
    for f in /proc/"$1"/task/*/stat; do
        # comm is in parentheses and may hold spaces: take what follows the last ')'.
        sed -n 's/^[0-9]* (\(.*\)) \(.*\)$/\1|\2/p' "$f" 2>/dev/null
    done | awk -F'|' '{ split($2, a, " "); t[$1] += a[12] + a[13] } END { for (k in t) print k, t[k] }' |
        sed 's/ \([0-9]*\)$/|\1/; s/ /_/g; s/|/ /' | sort
}
cpu_per_message() { # name -> "thread µs-per-accepted-message" lines and the total
    local hz acc secs
    hz=$(getconf CLK_TCK)
    acc=$(json_field "$OUT/$1.json" accepted)
    secs=$(json_field "$OUT/$1.json" elapsed_s)
    join -a2 -e 0 -o 0,1.2,2.2 "$OUT/$1.ticks0" "$OUT/$1.ticks1" |
        awk -v hz="$hz" -v acc="${acc:-0}" -v secs="${secs:-0}" '
            { d = $3 - $2; if (d > 0) { us[$1] = d; tot += d } }
            END {
                if (acc <= 0) exit
                for (k in us) printf "%s %.1f\n", k, us[k] * 1e6 / hz / acc
                printf "total %.1f (%.2f cores)\n", tot * 1e6 / hz / acc, (secs > 0 ? tot / hz / secs : 0)
            }' | sort
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building release binary"
    cargo build --release --bin smsgw
fi
for b in "$BIN" "$GW_BIN" "$BENCH_BIN"; do
    [ -x "$b" ] || { log "no binary at $b"; exit 1; }
done

# Bench copies of the default config: our ports, a private state dir per driver, and link
# rates, windows and queues high enough that no link's contract is what the benchmark measures
# (every link gets window 200, also those that leave it at the default of 10).
# Each driver's servers get their own ports (+10 per driver): a restarted server must not
# race the previous one's sockets (TIME_WAIT, a process still exiting).
STATE_BACKEND=${STATE_BACKEND:-embedded}
# The [state] lines for the backend: any backend (and, for memory, ttl_s/memory_max_records)
# line of the copied [state] section is dropped and ours go right after its header.
STATE_LINES="backend = \"$STATE_BACKEND\""
STATE_DROP='/^backend = /d'
case $STATE_BACKEND in
    embedded)
        if [ -n "${STATE_ENGINE:-}" ]; then
            STATE_LINES="$STATE_LINES\nengine = \"$STATE_ENGINE\""
            STATE_DROP='/^backend = /d;/^engine = /d'
        fi
        ;;
    memory)
        STATE_LINES="$STATE_LINES\nttl_s = 60\nmemory_max_records = 4000000"
        STATE_DROP='/^backend = /d;/^ttl_s = /d;/^memory_max_records = /d'
        ;;
    *) log "unknown STATE_BACKEND $STATE_BACKEND (embedded or memory)"; exit 1 ;;
esac
k=0
for d in $DRIVERS; do
    echo "$((HTTP_PORT + k)) $((NULL_PORT + k)) $((GRPC_PORT + k))" >"$OUT/ports-$d"
    sed -e "s|^http_addr = .*|http_addr = \"127.0.0.1:$((HTTP_PORT + k))\"|" \
        -e "s|^shards = .*|shards = $SHARDS|" \
        -e "s|^path = \"var/state\"|path = \"$OUT/state-$d\"|" \
        -e "s|^fsync = .*|fsync = \"${STATE_FSYNC:-batch}\"|" \
        -e "/^\[state\]\$/,/^\[/{$STATE_DROP}" \
        -e "s|^\[state\]\$|[state]\n$STATE_LINES|" \
        -e "s|^grpc_addr = .*|grpc_addr = \"127.0.0.1:$((GRPC_PORT + k))\"|" \
        "$GW_CONFIG" >"$OUT/smsgw-$d.toml"
    k=$((k + 10))
done
sed -e "s|^port = 2775|port = $SIM_PORT|" \
    -e "s|^esme_rate = .*|esme_rate = 100000|" \
    -e "s|^esme_rate_burst = .*|esme_rate_burst = 100000|" \
    -e "/^window = /d" \
    -e "/^max_pending = /d" \
    -e "s|^\(\[links\.[0-9]*\]\)\$|\1\nwindow = 200\nmax_pending = 100000|" \
    "$GW_RULES" >"$OUT/smpp_rules.toml"
# Authentication is on (as in production): the demo app, a throw-away server key, one token.
cp config/apps.toml "$OUT/apps.toml"
export SMSGW_JWT_SECRET="${SMSGW_JWT_SECRET:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}"
first_driver=${DRIVERS%% *}
TOKEN="$("$GW_BIN" token --config "$OUT/smsgw-$first_driver.toml" --rules "$OUT/smpp_rules.toml" --app-id 1)"
"$GW_BIN" check-config --config "$OUT/smsgw-$first_driver.toml" --rules "$OUT/smpp_rules.toml" \
    >"$OUT/check-config.txt" || { cat "$OUT/check-config.txt" >&2; exit 1; }

log "starting smsc-sim on :$SIM_PORT (results in $OUT)"
"$BENCH_BIN" smsc-sim --listen "127.0.0.1:$SIM_PORT" --dlr-percent "$DLR_PERCENT" >"$OUT/sim.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$SIM_PORT" smsc-sim

AUTH=(--header "Authorization: Bearer $TOKEN" --header "X-App-ID: 1")
COMMON=(--threads "$BENCH_THREADS" --esme "$ESME" --text-mix "$TEXT_MIX"
        --duration "$DURATION" --quiet "${AUTH[@]}")

GW_PID=0
run_bench() { # name url rate connections pipeline [extra bench args...]
    local name=$1 url=$2 rate=$3 conns=$4 pipe=$5
    shift 5
    log "bench $name: rate $rate, $conns connections x $pipe $* for $DURATION"
    # PERF_RECORD=1: sample the gateway (call graphs) during its max runs, for `perf report`.
    local perf_pid=0
    if [ "${PERF_RECORD:-0}" = 1 ] && [ "$rate" = max ] && [[ "$name" != *null* ]]; then
        # shellcheck disable=SC2086
        perf record ${PERF_ARGS:--F 499 --call-graph dwarf,8192} -p "$GW_PID" -o "$OUT/$name.perf.data" \
            -- sleep "${DURATION%s}" >"$OUT/$name.perf.log" 2>&1 &
        perf_pid=$!
    fi
    # Gateway CPU per thread name (shard-N, state-writer, smsgw-cdr, ...) before and after,
    # in clock ticks, so the summary can say where each message's CPU went.
    [ "$GW_PID" != 0 ] && [[ "$name" != *null* ]] && thread_ticks "$GW_PID" >"$OUT/$name.ticks0"
    set +e
    "$BENCH_BIN" bench --url "$url" --rate "$rate" --connections "$conns" --pipeline "$pipe" "${COMMON[@]}" \
        --max-error-rate 1 --json "$OUT/$name.json" --hdr-out "$OUT/$name.hdr" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    set -e
    [ "$perf_pid" != 0 ] && wait "$perf_pid" 2>/dev/null || true
    if [ -f "$OUT/$name.ticks0" ]; then
        thread_ticks "$GW_PID" >"$OUT/$name.ticks1"
        cpu_per_message "$name" >"$OUT/$name.cpu"
    fi
    cat "$OUT/$name.txt"
    echo "$rc" >"$OUT/$name.rc"
}

RUNS=()
for d in $DRIVERS; do
    case $d in
        io_uring) DENV=() ;;
        epoll) DENV=(MONOIO_FORCE_LEGACY_DRIVER=1) ;;
        *) log "unknown driver $d (io_uring or epoll)"; exit 1 ;;
    esac
    read -r HTTP_PORT NULL_PORT GRPC_PORT <"$OUT/ports-$d"
    log "[$d] starting null-http on :$NULL_PORT and the gateway on :$HTTP_PORT"
    env "${DENV[@]}" "$BENCH_BIN" null-http --addr "127.0.0.1:$NULL_PORT" --threads "$SHARDS" >"$OUT/null-$d.log" 2>&1 &
    NULL_PID=$!
    PIDS+=($NULL_PID)
    env "${DENV[@]}" "$GW_BIN" serve --config "$OUT/smsgw-$d.toml" --rules "$OUT/smpp_rules.toml" >"$OUT/gateway-$d.log" 2>&1 &
    GW_PID=$!
    PIDS+=($GW_PID)
    wait_port 127.0.0.1 "$NULL_PORT" null-http
    wait_port 127.0.0.1 "$HTTP_PORT" gateway

    # Wait until the gateway routes (links bound): a short low-rate probe must succeed.
    ready=0
    for _ in $(seq 1 30); do
        if "$BENCH_BIN" bench --url "http://127.0.0.1:$HTTP_PORT" --rate 20 --requests 10 --connections 1 \
            --esme "$ESME" --quiet --max-error-rate 0 "${AUTH[@]}" >"$OUT/probe-$d.txt" 2>&1; then
            ready=1
            break
        fi
        sleep 1
    done
    [ "$ready" = 1 ] || { log "gateway never accepted the probe; last attempt:"; cat "$OUT/probe-$d.txt" >&2; exit 1; }
    sleep 1
    rss_kib "$GW_PID" >"$OUT/idle-rss-$d.kib"
    log "[$d] gateway idle RSS $(cat "$OUT/idle-rss-$d.kib") KiB"

    if [ "$NULL" = 1 ]; then
        run_bench "$d-null-max" "http://127.0.0.1:$NULL_PORT" max "$CONNECTIONS" "$PIPELINE"
        RUNS+=("$d-null-max")
    fi
    for rate in $RATES; do
        run_bench "$d-gw-$rate" "http://127.0.0.1:$HTTP_PORT" "$rate" "$CONNECTIONS" "$PIPELINE"
        RUNS+=("$d-gw-$rate")
    done
    run_bench "$d-gw-max" "http://127.0.0.1:$HTTP_PORT" max "$CONNECTIONS" "$PIPELINE"
    RUNS+=("$d-gw-max")
    if [ "$HALF" = 1 ]; then
        max_rate=$(json_field "$OUT/$d-gw-max.json" accepted_per_s)
        half=$(awk -v m="${max_rate:-0}" 'BEGIN { h = int(m / 2); print (h < 1 ? 1 : h) }')
        run_bench "$d-gw-half" "http://127.0.0.1:$HTTP_PORT" "$half" "$CONNECTIONS" "$PIPELINE"
        RUNS+=("$d-gw-half")
    fi
    for b in $BATCH; do
        run_bench "$d-batch-$b" "http://127.0.0.1:$HTTP_PORT" max "$BATCH_CONNECTIONS" 1 --batch "$b"
        RUNS+=("$d-batch-$b")
    done
    if [ "$GRPC" = 1 ]; then
        run_bench "$d-grpc-max" "http://127.0.0.1:$GRPC_PORT" max "$GRPC_CONNECTIONS" "$GRPC_PIPELINE" --protocol grpc
        RUNS+=("$d-grpc-max")
        run_bench "$d-grpc-stream-max" "http://127.0.0.1:$GRPC_PORT" max "$GRPC_CONNECTIONS" "$GRPC_PIPELINE" --protocol grpc-stream
        RUNS+=("$d-grpc-stream-max")
    fi
    stop_pid "$GW_PID"
    stop_pid "$NULL_PID"
    GW_PID=0
done

gw_drivers=$(sed -n 's/.*smsgw listening .*drivers=\([a-z_,+]*\).*/\1/p' "$OUT"/gateway-*.log | tr '\n' ' ')
{
    echo
    echo "# smsgw end-to-end REST benchmark"
    echo "date        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "revision    $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "binaries    gateway $GW_BIN, bench/null/sim $BENCH_BIN"
    echo "machine     nproc=$(nproc) kernel=$(uname -r) gateway-drivers=${gw_drivers:-unknown}"
    echo "load avg    at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box skews absolute figures)"
    echo "command     DURATION=$DURATION RATES=\"$RATES\" HALF=$HALF BATCH=\"$BATCH\" GRPC=$GRPC DRIVERS=\"$DRIVERS\" CONNECTIONS=$CONNECTIONS PIPELINE=$PIPELINE BENCH_THREADS=$BENCH_THREADS SHARDS=$SHARDS STATE_FSYNC=${STATE_FSYNC:-batch} STATE_BACKEND=$STATE_BACKEND STATE_ENGINE=${STATE_ENGINE:-} bench/run-e2e.sh"
    echo "client      connections=$CONNECTIONS pipeline=$PIPELINE (batch runs: $BATCH_CONNECTIONS x 1; gRPC runs: $GRPC_CONNECTIONS x $GRPC_PIPELINE) threads=$BENCH_THREADS duration=$DURATION esme=$ESME mix=$TEXT_MIX"
    echo "servers     gateway shards=$SHARDS state=$STATE_BACKEND engine=${STATE_ENGINE:-default} state-fsync=${STATE_FSYNC:-batch}, null-http threads=$SHARDS, smsc-sim dlr=$DLR_PERCENT%"
    for d in $DRIVERS; do
        echo "idle RSS    $d: gateway $(awk '{ printf "%.1f MiB", $1 / 1024 }' "$OUT/idle-rss-$d.kib")"
    done
    echo
    printf '%-22s %10s %12s %10s %10s %10s %10s %10s %8s\n' run target msg/s errors p50_us p99_us p99.9_us max_us vs_null
    for name in "${RUNS[@]}"; do
        f="$OUT/$name.json"
        [ -f "$f" ] || { printf '%-22s (no result, see %s)\n' "$name" "$OUT/$name.txt"; continue; }
        null_rate=0
        [ -f "$OUT/${name%%-*}-null-max.json" ] && null_rate=$(json_field "$OUT/${name%%-*}-null-max.json" accepted_per_s)
        acc=$(json_field "$f" accepted_per_s)
        target=$(json_field "$f" rate_per_s)
        [ "$target" = null ] && target=max
        printf '%-22s %10s %12.0f %10s %10.0f %10.0f %10.0f %10.0f %8s\n' "$name" "$target" "$acc" \
            "$(json_field "$f" errors_total)" "$(latency_field "$f" p50_us)" "$(latency_field "$f" p99_us)" \
            "$(latency_field "$f" p999_us)" "$(latency_field "$f" max_us)" \
            "$(awk -v a="$acc" -v b="${null_rate:-0}" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')"
    done
    echo
    echo "gateway CPU per accepted message, µs, by thread name (max runs; from /proc, includes"
    echo "the drain after the run):"
    for name in "${RUNS[@]}"; do
        f="$OUT/$name.cpu"
        [[ "$name" == *-max ]] && [ -s "$f" ] || continue
        printf '%-22s %s\n' "$name" "$(tr '\n' ' ' <"$f")"
    done
    echo
    echo "msg/s = accepted messages per second. Latency is per request, from each request's"
    echo "scheduled send time (open loop); 'max' runs are closed loop (latency from actual send);"
    echo "batch runs: one request carries N messages. Raw JSON/HDR files: $OUT"
} | tee "$OUT/summary.txt"
