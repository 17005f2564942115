#!/usr/bin/env bash
# Prints one JSON object with the product's speed and memory figures (see README, Benchmarks):
# webhook ack latency p50/p99 under 50 concurrent senders, pipeline documents/s with a
# zero-latency model, peak RSS of `pai serve`, chat retrieval p50 over 100k chunks.
# Everything runs on loopback. BENCH_DOCUMENTS and BENCH_CHUNKS change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p pai -p pai-tests --bin pai --bin pai-bench
exec target/release/pai-bench target/release/pai
