#!/usr/bin/env bash
# The API fuzzed against its own OpenAPI document: a `boostream serve` on a free loopback port and a
# data directory of its own, then schemathesis over GET /openapi.json (every phase: examples,
# coverage, fuzzing, and stateful runs along the document's links, create -> status -> events ->
# result), bounded in examples per operation; schemathesis.toml says what it may take as expected.
# `make fuzz` runs it; so does .ci/run. Exits with schemathesis's status.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
EXAMPLES=${FUZZ_EXAMPLES:-50}
work=$(mktemp -d)
port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/boostream" serve --port "$port" --data-dir "$work/data" --log-level warning >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do
  "$BIN/python" -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$port/health').status_code != 200)" \
    2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.5
done
status=0
timeout 900 "$BIN/schemathesis" --no-color run "http://127.0.0.1:$port/openapi.json" \
  --phases examples,coverage,fuzzing,stateful --max-examples "$EXAMPLES" --workers 2 \
  --request-timeout 30 --seed 1 || status=$?
if grep -q "Traceback" "$work/server.log"; then
  echo "fuzz: the server logged a traceback:" >&2
  cat "$work/server.log" >&2
  status=1
fi
exit $status
