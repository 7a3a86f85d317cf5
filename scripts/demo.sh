#!/usr/bin/env bash
# `make demo`: local broker + worker + a small synthetic workload, then the worker's output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CS=.venv/bin/callstream
export CALLSTREAM_BOOTSTRAP="${CALLSTREAM_BOOTSTRAP:-127.0.0.1:9092}"
port="${CALLSTREAM_BOOTSTRAP##*:}"
mkdir -p var/demo
prefix="demo$(date +%s)."

if ! $CS broker status >/dev/null 2>&1; then
    $CS broker start --port "$port"
fi
$CS simulate --trusts LAS,EEAST,NWAS --hours 8 --seed 7 --duplicates 0.01 --malformed 0.002 \
    --out var/demo/demo.jsonl
$CS worker --topic-prefix "$prefix" --loglevel warning > var/demo/worker.log 2>&1 &
echo $! > var/demo/worker.pid
$CS replay var/demo/demo.jsonl --topic-prefix "$prefix"
echo "--- calls.stats (1-hour windows as the worker closes them; Ctrl-C to stop watching) ---"
$CS tail stats --topic-prefix "$prefix" --from-beginning --window 1h --idle 25
echo "--- calls.deadletter ---"
$CS tail deadletter --topic-prefix "$prefix" --from-beginning --idle 3
echo "worker health: curl http://127.0.0.1:6066/health   (topics prefixed '$prefix')"
echo "stop everything: make stop"
