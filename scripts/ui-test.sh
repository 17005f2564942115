#!/usr/bin/env bash
# The web UI's browser tests: headless Debian chromium driven by playwright-core (npm, no
# browser download) over a real `pai serve` with the fake Paperless-ngx and model
# (tests/src/bin/pai-ui-fixture.rs). Screenshots of every page land in target/ui-screenshots/.
#   scripts/ui-test.sh                       all scenarios
#   scripts/ui-test.sh status_page_checks    only the named ones (see tests/ui/run.mjs)
# Node.js is needed for these tests only; building and running the Rust project never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v node >/dev/null 2>&1 || apt_install nodejs npm
if [ ! -d tests/ui/node_modules/playwright-core ]; then
  (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo build --quiet -p pai --bin pai -p pai-tests --bin pai-ui-fixture
node tests/ui/run.mjs "$@"
