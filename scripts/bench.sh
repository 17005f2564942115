#!/usr/bin/env bash
# Prints one JSON object with the product's speed and memory figures (see README, Benchmarks):
# webhook ack latency p50/p99 under 50 concurrent senders, pipeline documents/s with a
# zero-latency model, peak RSS of `pai serve`, chat retrieval p50 over 100k chunks, and each
# Lambda function's binary size and cold start (`pai-bench target/release/pai lambda` alone).
# Everything runs on loopback. BENCH_DOCUMENTS and BENCH_CHUNKS change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p pai -p pai-tests --bin pai --bin pai-bench \
  -p pai-ingest -p pai-chunk -p pai-embed -p pai-tag -p pai-chat -p pai-sync \
  --bin pai-ingest --bin pai-chunk --bin pai-embed --bin pai-tag --bin pai-chat --bin pai-sync
exec target/release/pai-bench target/release/pai
