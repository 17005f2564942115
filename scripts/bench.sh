#!/usr/bin/env bash
# Prints one JSON object with the product's speed and memory figures (see README, Benchmarks):
# webhook ack latency p50/p99 under 50 concurrent senders; pipeline throughput with a
# zero-latency model (1,000 documents and a 128-document burst), with a hosted model answering
# in 0.5 s and in 2 s that refuses (429) more than 32 calls in flight, and with one slow local
# model (one call at a time, 2 s); Paperless requests per document; peak RSS of `pai serve`;
# chat retrieval p50 over 100k chunks; and each Lambda function's size (stripped arm64 binary
# and zip, from a per-package `cargo lambda build`; x86_64 binary) and cold start (x86_64).
# Everything runs on loopback. BENCH_DOCUMENTS and BENCH_CHUNKS change the sizes;
# `scripts/bench.sh throughput` runs the throughput part alone, `scripts/bench.sh retrieval`
# the two retrieval timings, `scripts/bench.sh lambda` the Lambda part; BENCH_PROFILE=quick builds without fat LTO (quicker, for development; the
# arm64 sizes keep the release profile unless BENCH_LAMBDA_PROFILE says otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
profile="${BENCH_PROFILE:-release}"
# The arm64 sizes are what ships (`sam build`: the release profile) unless this says otherwise.
lambda_profile="${BENCH_LAMBDA_PROFILE:-release}"
part="${1:-}"
cargo build --profile "$profile" -q -p pai -p pai-tests --bin pai --bin pai-bench
if [ "$part" != "throughput" ] && [ "$part" != "retrieval" ]; then
  # Each function as its own package, as `sam build` builds it (one cargo call for all six
  # would unify their features): x86_64 here for the init times, arm64 through cargo-lambda
  # (scripts/setup-deploy.sh) for the sizes Lambda deploys, zipped as the code package is.
  scripts/setup-deploy.sh
  export PATH="$PWD/.venv/bin:$PATH"
  for f in ingest chunk embed tag chat sync; do
    cargo build --profile "$profile" -q -p "pai-$f"
    cargo lambda build --profile "$lambda_profile" --arm64 -q -p "pai-$f" --bin "pai-$f"
    python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1] + ".zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.write(sys.argv[1], "bootstrap")' "target/lambda/pai-$f/bootstrap"
  done
fi
exec "target/$profile/pai-bench" "target/$profile/pai" $part
