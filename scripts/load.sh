#!/usr/bin/env bash
# Chat under load: 200 concurrent clients for 30 s against the release `pai serve`, whose
# model (a fake OpenAI-compatible server) answers after a fixed 200 ms. Prints one JSON object
# with requests, errors and latency p50/p99. All traffic stays on loopback.
# LOAD_CLIENTS, LOAD_SECONDS and LOAD_MODEL_LATENCY_MS change the shape.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p pai -p pai-tests --bin pai --bin pai-bench
exec target/release/pai-bench load target/release/pai
