#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the ports' contract suites, and the
# end-to-end tests over real HTTP on loopback (fake Paperless-ngx, fake model server).
# The README's second command; CI runs it through .ci/run on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== each Lambda function as its own package (what sam build compiles)"
# A workspace build unifies features; on its own a function has only its slots and stage, so a
# use of what it does not bind fails here, not at deploy.
for f in ingest chunk embed tag chat sync; do
  cargo clippy -q -p "pai-$f" -- -D warnings
done
echo "== cargo test"
cargo test --workspace --all-targets --all-features
echo "== web UI in headless chromium"
scripts/ui-test.sh
