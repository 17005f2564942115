#!/usr/bin/env bash
# Prints one JSON object with the product's speed and memory figures (see README, Benchmarks):
# webhook ack latency p50/p99 under 50 concurrent senders; pipeline throughput with a
# zero-latency model (1,000 documents and a 128-document burst), with a hosted model answering
# in 0.5 s and in 2 s that refuses (429) more than 32 calls in flight, and with one slow local
# model (one call at a time, 2 s); Paperless requests per document; peak RSS of `pai serve`;
# chat retrieval p50 over 100k chunks; and each Lambda function's binary size and cold start.
# Everything runs on loopback. BENCH_DOCUMENTS and BENCH_CHUNKS change the sizes;
# `scripts/bench.sh throughput` runs the throughput part alone, `scripts/bench.sh lambda` the
# Lambda part; BENCH_PROFILE=quick builds without fat LTO (quicker, for development).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
profile="${BENCH_PROFILE:-release}"
part="${1:-}"
if [ "$part" = "throughput" ]; then
  cargo build --profile "$profile" -q -p pai -p pai-tests --bin pai --bin pai-bench
else
  cargo build --profile "$profile" -q -p pai -p pai-tests --bin pai --bin pai-bench \
    -p pai-ingest -p pai-chunk -p pai-embed -p pai-tag -p pai-chat -p pai-sync \
    --bin pai-ingest --bin pai-chunk --bin pai-embed --bin pai-tag --bin pai-chat --bin pai-sync
fi
exec "target/$profile/pai-bench" "target/$profile/pai" $part
