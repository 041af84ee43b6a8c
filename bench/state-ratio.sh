#!/usr/bin/env bash
# What state writes cost end to end (issue #5 point 8): the gateway's REST max throughput with
# each state configuration against the NOT durable memory backend, measured in alternated
# rounds on this machine so that every ratio compares runs minutes apart. This box's single
# runs spread by ±10% or more within an hour (perf/RESULTS.md), so one pair of runs proves
# nothing: read the medians.
#
#   bench/state-ratio.sh                         # 3 rounds of memory, journal off, journal batch
#   ROUNDS=5 CONFIGS="memory batch" bench/state-ratio.sh
#
# Knobs (environment): ROUNDS (default 3, at most 10); CONFIGS (in round order, default
# "memory off batch": memory = STATE_BACKEND=memory; off / batch = the embedded backend's
# journal engine with that fsync policy); DURATION (per run, default 60s: the journal's
# steady state, see below); CONNECTIONS (closed
# loop, default 256); NO_BUILD=1 (reuse target/release/smsgw); GW_BIN / BENCH_BIN / GW_CONFIG
# as for run-e2e.sh; OUT (result directory, default a new temp dir).
# Each run is one bench/run-e2e.sh (gateway at max only, no null baseline), bounded by
# DURATION; the whole script by ROUNDS x CONFIGS such runs.
#
# Why 60 s: the journal evicts a record `hot_secs` (30) after its checkpoint and fjall starts
# compacting the checkpoints' tables after a few of them, so a 15 s run sees neither. Measured
# in session 10 (perf/RESULTS.md): `off` at 0.86 (median) of memory in 15 s runs but 0.69-0.80
# in 60 s runs, where eviction and compaction cost ~3 µs/msg more.
set -euo pipefail

cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
CONFIGS=${CONFIGS:-"memory off batch"}
DURATION=${DURATION:-60s}
CONNECTIONS=${CONNECTIONS:-256}
OUT=${OUT:-$(mktemp -d /tmp/smsgw-ratio.XXXXXX)}
mkdir -p "$OUT"
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 10 ]; then
    echo "ROUNDS must be 1..10" >&2
    exit 1
fi
for c in $CONFIGS; do
    case $c in
        memory | off | batch) ;;
        *) echo "unknown config $c (memory, off or batch)" >&2; exit 1 ;;
    esac
done
case " $CONFIGS " in
    *" memory "*) ;;
    *) echo "CONFIGS must include memory (the baseline)" >&2; exit 1 ;;
esac

if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release --quiet
fi

# json_field
source bench/lib.sh
cpu_total() { # run dir -> gateway CPU µs per message, all threads
    sed -n 's/^total \([0-9.]*\) .*/\1/p' "$1/io_uring-gw-max.cpu" 2>/dev/null | head -n1
}

for r in $(seq 1 "$ROUNDS"); do
    for c in $CONFIGS; do
        dir="$OUT/r$r-$c"
        backend=embedded fsync=$c
        [ "$c" = memory ] && backend=memory fsync=off
        echo "== round $r/$ROUNDS: $c" >&2
        OUT="$dir" STATE_BACKEND=$backend STATE_FSYNC=$fsync NO_BUILD=1 NULL=0 HALF=0 RATES=" " \
            BATCH=none GRPC=0 DRIVERS=io_uring DURATION="$DURATION" CONNECTIONS="$CONNECTIONS" \
            bench/run-e2e.sh >"$dir.log" 2>&1 || { echo "run failed: $dir.log" >&2; exit 1; }
        echo "$r $c $(json_field "$dir/io_uring-gw-max.json" accepted_per_s) $(cpu_total "$dir")" >>"$OUT/runs.txt"
    done
done

{
    echo "state-ratio: $(date -u +%FT%TZ), revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs, $ROUNDS rounds x ($CONFIGS), $DURATION each, $CONNECTIONS connections"
    awk -v configs="$CONFIGS" '
        { rate[$1, $2] = $3; cpu[$1, $2] = $4; if ($1 > rounds) rounds = $1 }
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        END {
            n = split(configs, cs, " ")
            printf "%-8s", "config"
            for (r = 1; r <= rounds; r++) printf "  round %-2d msg/s (ratio, µs/msg)", r
            printf "  median ratio\n"
            for (i = 1; i <= n; i++) {
                c = cs[i]; k = 0
                printf "%-8s", c
                for (r = 1; r <= rounds; r++) {
                    ratio = rate[r, "memory"] > 0 ? rate[r, c] / rate[r, "memory"] : 0
                    ratios[++k] = ratio
                    printf "  %8.0f (%.2f, %5.1f)           ", rate[r, c], ratio, cpu[r, c]
                }
                printf "  %.2f\n", median(ratios, k)
            }
            print "ratio = msg/s against the memory run of the same round; µs/msg = gateway CPU per message, all threads."
        }' "$OUT/runs.txt"
    echo "runs: $OUT"
} | tee "$OUT/summary.txt"
