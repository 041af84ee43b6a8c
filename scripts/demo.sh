#!/usr/bin/env bash
# End-to-end demo: build smsgw, start the SMSC simulator and the gateway with the default
# configuration (config/), send one message, wait for its delivery receipt, print its status,
# stop both. Needs only Rust and bash (HTTP is spoken through bash's /dev/tcp).
#
#   ./scripts/demo.sh
#
# Ports: REST 127.0.0.1:8088 and SMPP 127.0.0.1:2775, as in config/. Exit status 0 only if the
# message ends up `delivered`.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_HOST=127.0.0.1
HTTP_PORT=8088
SMPP_ADDR=127.0.0.1:2775
READY_TIMEOUT_S=60
DELIVERY_TIMEOUT_S=30

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# A debug build: much faster to compile on a small machine than --release, fast enough here.
log "building smsgw (cargo build --bin smsgw)"
cargo build --quiet --bin smsgw
BIN="${CARGO_TARGET_DIR:-target}/debug/smsgw"

WORK="$(mktemp -d)"
SIM_PID=""
GW_PID=""
cleanup() {
  local status=$?
  # Stop by PID: the gateway first (graceful SIGTERM: drains and unbinds), then the simulator.
  if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  if [[ -n "$SIM_PID" ]] && kill -0 "$SIM_PID" 2>/dev/null; then
    kill -TERM "$SIM_PID" 2>/dev/null || true
    sleep 0.2
    kill -KILL "$SIM_PID" 2>/dev/null || true
  fi
  if [[ $status -ne 0 ]]; then
    echo "--- gateway log (last 30 lines) ---" >&2; tail -n 30 "$WORK/gw.log" >&2 || true
    echo "--- simulator log (last 10 lines) ---" >&2; tail -n 10 "$WORK/sim.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT INT TERM

# http METHOD PATH [BODY] -> prints "STATUS BODY"
http() {
  local method=$1 path=$2 body=${3:-}
  local resp
  exec 3<>"/dev/tcp/$HTTP_HOST/$HTTP_PORT" || return 1
  printf '%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nAuthorization: Bearer %s\r\nX-App-ID: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$method" "$path" "$HTTP_HOST" "$SMSGW_TOKEN" "$SMSGW_APP_ID" "${#body}" "$body" >&3
  resp="$(cat <&3)"
  exec 3<&- 3>&-
  local status
  status="$(printf '%s' "$resp" | head -n1 | cut -d' ' -f2)"
  printf '%s %s\n' "$status" "${resp#*$'\r\n\r\n'}"
}

# Authentication is on in config/: a throw-away HS256 server key for this run, and a token for
# the demo app (app 1 in config/apps.toml) minted from the shell with `smsgw token`.
if [[ -z "${SMSGW_JWT_SECRET:-}" ]]; then
  SMSGW_JWT_SECRET="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
fi
export SMSGW_JWT_SECRET
export SMSGW_APP_ID=1
log "minting a token: smsgw token --app-id $SMSGW_APP_ID"
SMSGW_TOKEN="$("$BIN" token --config config/smsgw.toml --rules config/smpp_rules.toml --app-id "$SMSGW_APP_ID")"
export SMSGW_TOKEN

log "starting the SMSC simulator on $SMPP_ADDR"
# Message ids start from the clock so they never repeat ids of an earlier demo run still in the
# state store (var/state), as a real SMSC's would not.
"$BIN" smsc-sim --listen "$SMPP_ADDR" --dlr-delay-ms 200 --id-start "$(date +%s)000" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!

log "starting the gateway (config/smsgw.toml, config/smpp_rules.toml)"
"$BIN" serve --config config/smsgw.toml --rules config/smpp_rules.toml >"$WORK/gw.log" 2>&1 &
GW_PID=$!

log "waiting for /healthy and link 100 connected (a link counts as up after its first enquire_link)"
deadline=$((SECONDS + READY_TIMEOUT_S))
until out="$(http GET /api/v1/smpp/links 2>/dev/null)" &&
  [[ "$out" == 200* ]] &&
  [[ "$out" =~ \"id\":100[^}]*\"state\":\"connected\" || "$out" =~ \"state\":\"connected\"[^}]*\"id\":100 ]]; do
  if ! kill -0 "$GW_PID" 2>/dev/null; then log "gateway exited"; exit 1; fi
  if ((SECONDS > deadline)); then log "not ready after ${READY_TIMEOUT_S}s"; exit 1; fi
  sleep 0.5
done
http GET /healthy

log "sending one message (token and app id from SMSGW_TOKEN / SMSGW_APP_ID) with: smsgw send --url http://$HTTP_HOST:$HTTP_PORT --esme 100 --from smsgw --to +4915112345678 --text '...'"
answer="$("$BIN" send --url "http://$HTTP_HOST:$HTTP_PORT" --esme 100 --from smsgw --to +4915112345678 \
  --text 'Hello from smsgw! Your code is 123456.')"
echo "$answer"
txid="$(printf '%s' "$answer" | sed -n 's/.*"transaction_id":"\([^"]*\)".*/\1/p')"
[[ -n "$txid" ]] || { log "no transaction_id in the answer"; exit 1; }

log "waiting for the delivery receipt of $txid"
deadline=$((SECONDS + DELIVERY_TIMEOUT_S))
while true; do
  out="$(http GET "/api/v1/sms/$txid")"
  if [[ "$out" == *'"status":"delivered"'* && "$out" == 200* ]]; then
    break
  fi
  if ((SECONDS > deadline)); then log "not delivered after ${DELIVERY_TIMEOUT_S}s: $out"; exit 1; fi
  sleep 0.3
done
log "GET /api/v1/sms/$txid"
printf '%s\n' "${out#200 }"
log "delivered; stopping both"
