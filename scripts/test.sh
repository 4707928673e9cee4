#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (Java, protoc, Spark), then every test,
# the end-to-end ones with the real binary and real Spark Connect engines included.
set -euo pipefail
cd "$(dirname "$0")/.."

SPARK_HOME="$(bash scripts/setup.sh)"
export SPARK_HOME

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --no-fail-fast "$@"
