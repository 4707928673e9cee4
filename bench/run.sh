#!/usr/bin/env bash
# Builds Rucat and its benchmarks in release mode and runs every benchmark, printing markdown.
# Usage: bench/run.sh [claim_latency|get_throughput|engine_start|cas_throughput|
#                      claim_across_processes|list_due_scaling|kube_requests_per_pass|
#                      auth_overhead]...
#                      (default: all)
# engine_start needs Spark: SPARK_HOME is taken from the environment, else from scripts/setup.sh
# (which installs what is missing). cas_throughput, claim_across_processes and list_due_scaling
# need PostgreSQL: RUCAT_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail

cd "$(dirname "$0")/.."
# Two builds: a `--bin` filter would apply to both packages and skip the benchmarks.
cargo build --release -p rucat --bin rucat
cargo build --release -p rucat-bench

benches=("$@")
if [ "${#benches[@]}" = 0 ]; then
  benches=(claim_latency get_throughput engine_start cas_throughput claim_across_processes
    list_due_scaling kube_requests_per_pass auth_overhead)
fi

for bench in "${benches[@]}"; do
  case "$bench" in
    claim_latency | get_throughput | cas_throughput | claim_across_processes | \
      list_due_scaling | kube_requests_per_pass | auth_overhead)
      target/release/"$bench"
      ;;
    engine_start)
      if [ -z "${SPARK_HOME:-}" ]; then
        SPARK_HOME="$(bash scripts/setup.sh)"
        export SPARK_HOME
      fi
      target/release/engine_start
      ;;
    *)
      echo "unknown benchmark: $bench (expected claim_latency, get_throughput, engine_start, cas_throughput, claim_across_processes, list_due_scaling, kube_requests_per_pass or auth_overhead)" >&2
      exit 2
      ;;
  esac
  echo
done
