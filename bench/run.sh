#!/usr/bin/env bash
# Builds Rucat and its benchmarks in release mode and runs every benchmark, printing markdown.
# Usage: bench/run.sh [claim_latency|get_throughput|engine_start|cas_throughput|
#                      claim_across_processes|list_due_scaling|kube_requests_per_pass|
#                      auth_overhead|proxy_overhead|monitor_throughput|metrics_overhead]...
#                      (default: all)
# engine_start and proxy_overhead need Spark: SPARK_HOME is taken from the environment, else from
# scripts/setup.sh (which installs what is missing; proxy_overhead also uses its PySpark).
# get_throughput, cas_throughput, claim_across_processes, list_due_scaling, monitor_throughput and
# metrics_overhead need PostgreSQL:
# RUCAT_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test).
# monitor_throughput also measures an earlier rucat binary side by side if RUCAT_BEFORE names one
# (see bench/README.md for how to build the one before fencing).
set -euo pipefail

cd "$(dirname "$0")/.."
# Two builds: a `--bin` filter would apply to both packages and skip the benchmarks.
cargo build --release -p rucat --bin rucat
cargo build --release -p rucat-bench

benches=("$@")
if [ "${#benches[@]}" = 0 ]; then
  benches=(claim_latency get_throughput engine_start cas_throughput claim_across_processes
    list_due_scaling kube_requests_per_pass auth_overhead proxy_overhead monitor_throughput
    metrics_overhead)
fi

for bench in "${benches[@]}"; do
  case "$bench" in
    claim_latency | get_throughput | cas_throughput | claim_across_processes | \
      list_due_scaling | kube_requests_per_pass | auth_overhead | metrics_overhead)
      target/release/"$bench"
      ;;
    monitor_throughput)
      if [ -n "${RUCAT_BEFORE:-}" ]; then
        target/release/monitor_throughput --rucat-before "$RUCAT_BEFORE"
      else
        target/release/monitor_throughput
      fi
      ;;
    engine_start | proxy_overhead)
      if [ -z "${SPARK_HOME:-}" ]; then
        SPARK_HOME="$(bash scripts/setup.sh)"
        export SPARK_HOME
      fi
      target/release/"$bench"
      ;;
    *)
      echo "unknown benchmark: $bench (expected claim_latency, get_throughput, engine_start, cas_throughput, claim_across_processes, list_due_scaling, kube_requests_per_pass, auth_overhead, proxy_overhead, monitor_throughput or metrics_overhead)" >&2
      exit 2
      ;;
  esac
  echo
done
