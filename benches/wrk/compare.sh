#!/usr/bin/env bash
# EnergyGuard's GET /measurement/<key> and single-reading POST /ingest
# against the empty axum handler (examples/http_baseline.rs), with wrk, on
# this machine:
#
#   cargo build --release --bins --examples
#   benches/wrk/compare.sh [CONNECTIONS...]        # default: 32 64 128 256
#   TLS=1 benches/wrk/compare.sh ...               # HTTPS beside HTTP too
#   SERVICE_BIN=/path/to/energyguard benches/wrk/compare.sh ...  # another build
#
# For each connection count, ROUNDS rounds (default 3), each running the
# baseline, the GET and the POST in turn for DURATION (default 5s), so that a
# noisy machine moves all three alike. Prints every round, then per
# connection count the median requests/s and the median and range of the
# per-round ratios. The service runs with the default configuration
# (`synchronous = "full"`, consistent hashing, RF 2 over three nodes) in a
# temporary data directory. With TLS=1 a second service, alike but serving
# HTTPS with a self-signed certificate, takes the same GET and POST in each
# round, and a second table gives HTTPS against HTTP.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
service_bin=${SERVICE_BIN:-$root/target/release/energyguard}
baseline_bin=$root/target/release/examples/http_baseline
rounds=${ROUNDS:-3}
duration=${DURATION:-5s}
connections=("$@")
if [ ${#connections[@]} -eq 0 ]; then
    connections=(32 64 128 256)
fi

tls=${TLS:-0}
for tool in wrk curl python3 openssl; do
    command -v "$tool" >/dev/null || { echo "compare.sh needs $tool" >&2; exit 1; }
done
if [ ! -x "$service_bin" ] || [ ! -x "$baseline_bin" ]; then
    echo "build first: cargo build --release --bins --examples" >&2
    exit 1
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_until_up() {
    for _ in $(seq 100); do
        curl -sf --cacert "$work/cert.pem" -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    exit 1
}

ENERGYGUARD_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export ENERGYGUARD_TOKEN

# The readings get_measurement.lua reads: g0..g99, one a second.
seq 0 9999 | awk 'BEGIN { printf "[" }
    { printf "%s{\"sensor_id\":\"g%d\",\"timestamp\":%d,\"value\":1.0}", (NR > 1 ? "," : ""), $1 % 100, 1700000000 + $1 }
    END { printf "]" }' >"$work/readings.json"

# Starts a service in $work/NAME, stores the readings and sets $url to its
# address: start_service NAME [HTTP_LINES], HTTP_LINES going in [http].
start_service() {
    local dir="$work/$1" scheme=http
    [ -n "${2:-}" ] && scheme=https
    url="$scheme://127.0.0.1:$(free_port)"
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<EOF
data_dir = "$dir/data"
[http]
listen = "${url#*://}"
${2:-}
[mqtt]
listen = "127.0.0.1:$(free_port)"
[[auth.tokens]]
token = "$ENERGYGUARD_TOKEN"
role = "admin"
EOF
    RUST_LOG=warn "$service_bin" serve --config "$dir/config.toml" 2>"$dir/service.log" &
    pids+=($!)
    wait_until_up "$url/healthz"
    curl -sf --cacert "$work/cert.pem" -o /dev/null -H "Authorization: Bearer $ENERGYGUARD_TOKEN" \
        -H 'Content-Type: application/json' --data-binary @"$work/readings.json" "$url/ingest"
}

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
baseline="127.0.0.1:$(free_port)"
"$baseline_bin" "$baseline" >/dev/null &
pids+=($!)
wait_until_up "http://$baseline/"
start_service plain
service=$url
if [ "$tls" = 1 ]; then
    start_service tls "tls_cert = \"$work/cert.pem\"
tls_key = \"$work/key.pem\""
    secure=$url
fi

# Requests/s of one wrk run: rate CONNECTIONS URL [SCRIPT]. A run with any
# error answer stops the comparison.
rate() {
    local out
    out=$(wrk -t2 -c"$1" -d"$duration" ${3:+-s "$3"} "$2")
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
        echo "errors from $2:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/Requests\/sec/ { printf "%d", $2 }' <<<"$out"
}

# The median of the sorted numbers on stdin.
median() {
    awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# "median (min-max)" of the numbers on stdin, in the printf format $1.
summary() {
    local values
    values=$(sort -g)
    printf "$1 ($1-$1)" "$(median <<<"$values")" "$(head -1 <<<"$values")" "$(tail -1 <<<"$values")"
}

results="$work/results"
for c in "${connections[@]}"; do
    for round in $(seq "$rounds"); do
        base=$(rate "$c" "http://$baseline/")
        get=$(rate "$c" "$service" "$here/get_measurement.lua")
        post=$(rate "$c" "$service" "$here/ingest_one.lua")
        line="connections $c, round $round: baseline $base, GET $get, POST $post req/s"
        if [ "$tls" = 1 ]; then
            get_tls=$(rate "$c" "$secure" "$here/get_measurement.lua")
            post_tls=$(rate "$c" "$secure" "$here/ingest_one.lua")
            line="$line; HTTPS GET $get_tls, POST $post_tls req/s"
        fi
        echo "$c $base $get $post ${get_tls:-} ${post_tls:-}" >>"$results"
        echo "$line"
    done
done

echo
echo "| connections | baseline req/s | GET req/s | GET ratio | POST req/s | POST ratio |"
echo "|---|---|---|---|---|---|"
for c in "${connections[@]}"; do
    rows=$(awk -v c="$c" '$1 == c' "$results")
    echo "| $c" \
        "| $(awk '{ print $2 }' <<<"$rows" | summary %.0f)" \
        "| $(awk '{ print $3 }' <<<"$rows" | summary %.0f)" \
        "| $(awk '{ print $3 / $2 }' <<<"$rows" | summary %.2f)" \
        "| $(awk '{ print $4 }' <<<"$rows" | summary %.0f)" \
        "| $(awk '{ print $4 / $2 }' <<<"$rows" | summary %.2f) |"
done

if [ "$tls" = 1 ]; then
    echo
    echo "| connections | HTTPS GET req/s | HTTPS/HTTP GET | HTTPS POST req/s | HTTPS/HTTP POST |"
    echo "|---|---|---|---|---|"
    for c in "${connections[@]}"; do
        rows=$(awk -v c="$c" '$1 == c' "$results")
        echo "| $c" \
            "| $(awk '{ print $5 }' <<<"$rows" | summary %.0f)" \
            "| $(awk '{ print $5 / $3 }' <<<"$rows" | summary %.2f)" \
            "| $(awk '{ print $6 }' <<<"$rows" | summary %.0f)" \
            "| $(awk '{ print $6 / $4 }' <<<"$rows" | summary %.2f) |"
    done
fi
