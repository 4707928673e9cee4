#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (Java, protoc, Spark, PostgreSQL tools,
# Chromium and its WebDriver for the web console's tests), then every test, the end-to-end ones
# with the real binary and real Spark Connect engines included. PostgreSQL must run at
# RUCAT_TEST_POSTGRES_URL (default: 127.0.0.1:5432, user postgres, database test); the tests fail,
# never skip, without it.
set -euo pipefail
cd "$(dirname "$0")/.."

SPARK_HOME="$(bash scripts/setup.sh --k8s-tools --browser --schemathesis)"
export SPARK_HOME
# The Kubernetes manifest tools setup.sh installed (a virtualenv: bin/python runs
# scripts/k8s_check.py, bin/kubernetes-validate validates what the chart renders).
export RUCAT_K8S_TOOLS="${RUCAT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rucat}/k8s-tools"
# schemathesis's virtualenv (bin/st): the OpenAPI test runs it against the real binary.
export RUCAT_SCHEMATHESIS="${RUCAT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rucat}/schemathesis"

# The PostgreSQL tests create a fresh database per test on this server (and drop it after).
export RUCAT_TEST_POSTGRES_URL="${RUCAT_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
if ! psql "$RUCAT_TEST_POSTGRES_URL" -qtAc 'SELECT 1' >/dev/null; then
  echo "test: PostgreSQL is not reachable at $RUCAT_TEST_POSTGRES_URL (set RUCAT_TEST_POSTGRES_URL)" >&2
  exit 1
fi
# Databases a killed earlier run could not drop.
psql "$RUCAT_TEST_POSTGRES_URL" -qtAc \
  "SELECT datname FROM pg_database WHERE datname ~ '^rucat_[a-z_]+_[0-9a-f]{12}$'" |
  while read -r stale; do
    psql "$RUCAT_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$stale\" WITH (FORCE)" >/dev/null || true
  done

# The Python of the Spark virtualenv, with PySpark's Spark Connect client: the proxy tests run
# scripts/spark_client.py with it.
export RUCAT_SPARK_PYTHON="${RUCAT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rucat}/spark-${RUCAT_PYSPARK_VERSION:-4.3.0}/bin/python"

# The TLS Spark Connect client the proxy tests run: spark-connect-rs with its `tls` feature makes
# every endpoint https, so it is its own Cargo project (outside the workspace) with its own
# target directory (no fight for the workspace's build lock; cached across runs).
cargo build --release --quiet --locked --manifest-path tools/sc-tls-query/Cargo.toml \
  --target-dir tools/sc-tls-query/target
export RUCAT_SC_TLS_QUERY="$PWD/tools/sc-tls-query/target/release/sc-tls-query"

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --no-fail-fast "$@"
