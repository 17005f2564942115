#!/usr/bin/env bash
# Installs what `sam build` and `scripts/bench.sh lambda` need to build the arm64 Lambda
# binaries, on top of scripts/setup.sh: cargo-lambda and Zig (its cross linker) from PyPI into
# the project venv (.venv; no 14-minute `cargo install`), and Rust's aarch64 target. Safe to
# run again: a second run checks and returns in well under a second.
# Afterwards put the venv first on PATH (`export PATH="$PWD/.venv/bin:$PATH"`): cargo finds
# `cargo-lambda` there and cargo-lambda finds `python3 -m ziglang`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c "import ziglang" >/dev/null 2>&1 || [ ! -x .venv/bin/cargo-lambda ]; then
  if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # `python -m pip`, not `.venv/bin/pip`: a venv copied or moved keeps the old path in its
  # scripts' first line and would install into the original. Pinned to a major: cargo-lambda
  # 1.9 (the version checked with SAM CLI 1.170) and Zig 0.x (0.17 checked).
  .venv/bin/python -m pip install --quiet --disable-pip-version-check 'cargo-lambda>=1.9,<2' 'ziglang>=0.13,<1'
fi
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu
fi
