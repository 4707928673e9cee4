#!/usr/bin/env bash
# Installs what is missing (Java, Spark), builds Rucat and starts `rucat serve`: the REST API on
# 127.0.0.1:3000, SQLite and engine work directories under ~/.rucat, engines on this machine.
# Extra arguments go to `rucat serve` (see `rucat serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

SPARK_HOME="$(bash scripts/setup.sh)"
export SPARK_HOME
exec cargo run --release --quiet --bin rucat -- serve "$@"
