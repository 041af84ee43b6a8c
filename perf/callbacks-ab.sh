#!/usr/bin/env bash
# A/B: the same gateway with and without a per-app default callback URL (every message then
# has callbacks: submitted + delivered events through the outbox, POSTed to null-http).
set -euo pipefail
BIN=${BIN:-target/release/smsgw}
W=${WORK:-/tmp/smsgw-callbacks-ab}; rm -rf $W; mkdir -p $W
HASH='$argon2id$v=19$m=19456,t=2,p=1$LJfYVHi9BnnsKj0SN4l4iA$iUds5Uhe4xTr4l9NBy0pwmuqlqNUPRUzJbFXr2UnXVA'
export SMSGW_JWT_SECRET=perf-server-key-0123456789abcdef0123
RATE=${RATE:-3000}; DUR=${DUR:-10s}
$BIN smsc-sim --listen 127.0.0.1:27751 --control-port 0 --dlr-delay-ms 50 >$W/sim.log 2>&1 & SIM=$!
$BIN null-http --addr 127.0.0.1:28090 >$W/null.log 2>&1 & NULL=$!
trap 'kill $SIM $NULL 2>/dev/null || true' EXIT
sleep 0.5
run() { # $1 = label, $2 = extra apps line
  local d=$W/$1; mkdir -p $d
  cat >$d/smsgw.toml <<T
[server]
http_addr = "127.0.0.1:28088"
grpc_addr = "127.0.0.1:0"
shards = 1
[state]
path = "$d/state"
[security]
apps_file = "apps.toml"
[policy]
enabled = false
[cdr]
dir = "$d/cdr"
[callbacks]
path = "$d/callbacks"
T
  printf '[links.100]\nhost = "127.0.0.1"\nport = 27751\nsystem_id = "p"\npassword = "pw"\nesme_rate = 100000\nesme_rate_burst = 100000\nwindow = 200\nmax_pending = 100000\n' >$d/rules.toml
  printf '[apps.1]\nname = "p"\nsecret_hash = "%s"\nallowed_cidrs = ["127.0.0.1/32"]\ncallback_secret = "perf-callback-secret-0123"\n%s\n' "$HASH" "$2" >$d/apps.toml
  local tok; tok=$($BIN token --config $d/smsgw.toml --rules $d/rules.toml --app-id 1)
  $BIN serve --config $d/smsgw.toml --rules $d/rules.toml >$d/gw.log 2>&1 & local GW=$!
  for i in $(seq 100); do curl -s 127.0.0.1:28088/api/v1/smpp/links -H "Authorization: Bearer $tok" -H "X-App-ID: 1" | grep -q '"state":"connected"' && break; sleep 0.2; done
  $BIN bench --url http://127.0.0.1:28088 --rate $RATE --duration $DUR --connections 32 --header "Authorization: Bearer $tok" --header "X-App-ID: 1" --esme 100 --text-mix gsm7=100 --quiet --json $d/report.json >$d/bench.txt 2>&1 || true
  sleep 2
  local posts; posts=$(curl -s 127.0.0.1:28088/metrics | grep -E '^smsgw_callback_(posts_ok|events_enqueued|outbox_backlog)' | tr '\n' ' ')
  kill -TERM $GW; wait $GW || true
  echo "== $1: $(grep -E 'p50|p99|ok|rate' $d/bench.txt | tr '\n' ' ' | cut -c1-400)"
  echo "   $posts"
}
run base ""
run callbacks 'callback_url = "http://127.0.0.1:28090/hook"'
run base2 ""
