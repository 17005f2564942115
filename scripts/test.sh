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
echo "== cargo test"
cargo test --workspace --all-targets --all-features
echo "== web UI in headless chromium"
scripts/ui-test.sh
