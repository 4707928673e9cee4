#!/usr/bin/env bash
# Checks Rucat's engine token check against real Spark Connect servers: starts one with the
# interceptor and a first token and goes through a handover with PySpark's Spark Connect client,
# then starts one without a token and checks that it refuses everything. Exits non-zero on the
# first failure (with the end of the server's log).
#
#   SPARK_HOME=$(bash scripts/setup.sh 2>/dev/null) bash engine-auth/check.sh
#
# SPARK_HOME must hold jars/rucat-engine-auth.jar (scripts/setup.sh builds it). The Python is
# RUCAT_SPARK_PYTHON, else the virtualenv SPARK_HOME belongs to (the one of scripts/setup.sh).
set -euo pipefail

CLASS=io.rucat.engine.HandoverTokenInterceptor
: "${SPARK_HOME:?set SPARK_HOME (SPARK_HOME=\$(bash scripts/setup.sh 2>/dev/null))}"
if [ ! -f "$SPARK_HOME/jars/rucat-engine-auth.jar" ]; then
  echo "check: $SPARK_HOME/jars/rucat-engine-auth.jar is missing: run scripts/setup.sh" >&2
  exit 1
fi
PYTHON="${RUCAT_SPARK_PYTHON:-$SPARK_HOME/../../../../bin/python}"
if ! "$PYTHON" -c 'import pyspark.sql.connect.session' >/dev/null 2>&1; then
  echo "check: $PYTHON has no PySpark Spark Connect client: set RUCAT_SPARK_PYTHON" >&2
  exit 1
fi

WORK="$(mktemp -d)"
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 -- "-$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "check: FAILED: $*" >&2
  if [ -f "$WORK/server.log" ]; then
    echo "check: the end of the server's log:" >&2
    tail -n 40 "$WORK/server.log" >&2
  fi
  exit 1
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a Spark Connect server as Rucat does (spark-submit of the server class, bound to
# 127.0.0.1), with the interceptor and, if given, the first token; in its own process group.
start_server() {
  local token="$1"
  PORT="$(free_port)"
  rm -rf "$WORK/work" && mkdir -p "$WORK/work/scratch"
  : >"$WORK/server.log"
  local envs=(-u SPARK_CONNECT_AUTHENTICATE_TOKEN -u RUCAT_ENGINE_TOKEN)
  if [ -n "$token" ]; then envs+=("RUCAT_ENGINE_TOKEN=$token"); fi
  (
    cd "$WORK/work"
    exec env "${envs[@]}" SPARK_HOME="$SPARK_HOME" SPARK_LOCAL_IP=127.0.0.1 \
      setsid "$SPARK_HOME/bin/spark-submit" \
      --class org.apache.spark.sql.connect.service.SparkConnectServer \
      --name rucat-engine-auth-check --master 'local[1]' \
      --conf "spark.connect.grpc.interceptor.classes=$CLASS" \
      --conf "spark.connect.grpc.binding.port=$PORT" \
      --conf spark.connect.grpc.binding.address=127.0.0.1 \
      --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
      --conf spark.ui.enabled=false --conf "spark.local.dir=$WORK/work/scratch" \
      </dev/null >"$WORK/server.log" 2>&1
  ) &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then fail "the Spark Connect server exited"; fi
    if "$PYTHON" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
      "$PORT" 2>/dev/null; then
      echo "check: Spark Connect server up on port $PORT ($([ -n "$token" ] && echo "first token S0" || echo "no first token"))"
      return
    fi
    sleep 0.2
  done
  fail "the Spark Connect server did not listen on port $PORT within 120 s"
}

# One query through PySpark's client: prints OK, or REFUSED with the gRPC status and its
# description, or ERROR.
cat >"$WORK/query.py" <<'PY'
import re
import sys

from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import SparkSession

try:
    spark = SparkSession.builder.remote(sys.argv[1]).create()
    try:
        rows = spark.sql("SELECT 1 AS one").collect()
        print("OK" if rows[0][0] == 1 else f"ERROR wrong result {rows}")
    finally:
        try:
            spark.stop()
        except Exception:
            pass
except SparkConnectGrpcException as e:
    message = e.getMessage() or ""
    details = re.search(r'details = "([^"]*)"', message)
    first = message.splitlines()[0] if message else ""
    print(f"REFUSED {e.getGrpcStatusCode().name}: {details.group(1) if details else first}")
except Exception as e:
    print(f"ERROR {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
PY

# expect LABEL OK|REFUSED TOKEN [REKEY]
expect() {
  local label="$1" want="$2" token="$3" rekey="${4:-}"
  local url="sc://localhost:$PORT/"
  if [ -n "$token" ]; then url="$url;token=$token"; fi
  if [ -n "$rekey" ]; then url="$url;x-rucat-rekey=$rekey"; fi
  local got
  got="$("$PYTHON" "$WORK/query.py" "$url" 2>>"$WORK/client.log" | tail -n 1)"
  printf 'check: %-46s -> %s\n' "$label" "$got"
  case "$want:$got" in
    OK:OK) ;;
    REFUSED:"REFUSED UNAUTHENTICATED"*) ;;
    *) fail "$label: expected $want, got '$got'" ;;
  esac
}

S0="pool-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
S1="user-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
OTHER="other-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
WRONG="wrong-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"

start_server "$S0"
expect "S0 runs SELECT 1" OK "$S0"
expect "a wrong token is refused" REFUSED "$WRONG"
expect "no token is refused" REFUSED ""
expect "a wrong token with rekey S1 is refused" REFUSED "$WRONG" "$S1"
expect "S0 with a too short new token is refused" REFUSED "$S0" "short"
expect "S0 + rekey S1 runs (handover)" OK "$S0" "$S1"
expect "S0 alone is refused" REFUSED "$S0"
expect "S1 alone runs" OK "$S1"
expect "S0 + rekey S1 again runs (second caller)" OK "$S0" "$S1"
expect "S0 + rekey OTHER is refused" REFUSED "$S0" "$OTHER"
expect "S1 still runs" OK "$S1"
expect "OTHER alone is refused" REFUSED "$OTHER"
stop_server

start_server ""
expect "no first token: S0 is refused" REFUSED "$S0"
expect "no first token: S0 + rekey S1 is refused" REFUSED "$S0" "$S1"
expect "no first token: no token is refused" REFUSED ""
grep -q "RUCAT_ENGINE_TOKEN is not set" "$WORK/server.log" ||
  fail "the server's log does not say that RUCAT_ENGINE_TOKEN is not set"
if grep -qF -e "$S0" -e "$S1" -e "$OTHER" "$WORK/server.log"; then
  fail "a token appears in the server's log"
fi
stop_server

echo "check: all passed"
