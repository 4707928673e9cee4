#!/usr/bin/env bash
# Installs what Rucat needs on a fresh machine, skipping whatever is already there:
#   - Java 17 (Spark runs on it)
#   - protoc (the spark-connect-rs client used by the tests compiles Spark Connect's protos)
#   - Spark, as the `pyspark` package from PyPI in a cached virtualenv, with PySpark's own
#     Spark Connect client (the `connect` extra: grpcio, grpcio-status, googleapis-common-protos,
#     protobuf, pandas, pyarrow, zstandard) and requests pinned in the same virtualenv, so that
#     scripts/spark_client.py and `$VENV/bin/pyspark --remote sc://...` work
#   - Rucat's engine token check (engine-auth/: a gRPC interceptor for the Spark Connect server),
#     compiled into $SPARK_HOME/jars/rucat-engine-auth.jar, so that every Spark Connect server of
#     this Spark can load it; a JDK 17 (javac, jar) to compile it, when the sources changed
#   - the PostgreSQL server programs (initdb, pg_ctl) and psql: the tests run PostgreSQL
#     servers of their own to restart under load
#   - with --browser (the test suite asks for it; `rucat serve` needs none), Debian's chromium and
#     chromium-driver: the web console's tests drive a headless Chromium through WebDriver
#   - with --schemathesis (the test suite asks for it; `rucat serve` needs none), schemathesis,
#     which tests the REST API against its OpenAPI document, and openapi-spec-validator, in a
#     cached virtualenv of their own ($CACHE_DIR/schemathesis)
#   - with --k8s-tools (the test suite asks for them; `rucat serve` needs none), the Kubernetes
#     manifest tools, in a second cached virtualenv ($CACHE_DIR/k8s-tools):
#     helm-sdkpy and helm-python-sdk (Helm's Go library, for `helm lint` and `helm template`
#     without a helm binary or a cluster) and kubernetes-validate (the Kubernetes schemas);
#     scripts/k8s_check.py drives them
# Prints nothing but progress on stderr; the last line on stdout is the SPARK_HOME to use.
set -euo pipefail

WITH_K8S_TOOLS=0
WITH_BROWSER=0
WITH_SCHEMATHESIS=0
for arg in "$@"; do
  case "$arg" in
    --k8s-tools) WITH_K8S_TOOLS=1 ;;
    --browser) WITH_BROWSER=1 ;;
    --schemathesis) WITH_SCHEMATHESIS=1 ;;
    *) echo "setup: unknown argument $arg (expected --k8s-tools, --browser or --schemathesis)" >&2; exit 2 ;;
  esac
done

PYSPARK_VERSION="${RUCAT_PYSPARK_VERSION:-4.3.0}"
CACHE_DIR="${RUCAT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rucat}"
VENV="$CACHE_DIR/spark-$PYSPARK_VERSION"

say() { echo "setup: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >&2
}

if ! command -v java >/dev/null 2>&1 || ! java -version 2>&1 | grep -qE 'version "(17|21)'; then
  say "installing Java 17"
  apt_install openjdk-17-jre-headless
fi

if ! command -v protoc >/dev/null 2>&1; then
  say "installing protoc"
  apt_install protobuf-compiler
fi

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "installing the PostgreSQL server programs"
  apt_install postgresql
fi
if ! command -v psql >/dev/null 2>&1; then
  say "installing psql"
  apt_install postgresql-client
fi

if [ "$WITH_BROWSER" = 1 ] && { ! command -v chromium >/dev/null 2>&1 ||
  ! command -v chromedriver >/dev/null 2>&1; }; then
  say "installing chromium and chromium-driver (the web console's browser tests)"
  apt_install chromium chromium-driver
fi

make_venv() {
  if ! python3 -m venv "$1" >&2 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv "$1" >&2
  fi
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pyspark' >/dev/null 2>&1; then
  say "installing pyspark $PYSPARK_VERSION into $VENV (large download, cached afterwards)"
  make_venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyspark==$PYSPARK_VERSION" >&2
fi

# PySpark's Spark Connect client (SparkSession.builder.remote(...), `pyspark --remote`): what the
# `connect` extra of pyspark 4.3.0 asks for (grpcio, grpcio-status >= 1.76.0,
# googleapis-common-protos >= 1.71.0, zstandard >= 0.25.0, pandas >= 2.2.0, pyarrow >= 18.0.0,
# numpy >= 1.23.2), pinned; protobuf is pinned to the version pyspark's generated code was made
# with (6.33.5: older 6.x runtimes refuse to load it). `requests` is for the tests (a REST client
# as Python users write them), and so is `prometheus-client` (its text-format parser reads
# /metrics as Prometheus does). The list is stamped into the virtualenv,
# so changing it reinstalls; the import check is find_spec only, so a cached run stays fast.
CONNECT_PACKAGES=("pyspark[connect]==$PYSPARK_VERSION" grpcio==1.76.0 grpcio-status==1.76.0
  googleapis-common-protos==1.71.0 protobuf==6.33.5 zstandard==0.25.0
  pandas==2.3.3 pyarrow==22.0.0 numpy==2.3.5 requests==2.34.2 prometheus-client==0.26.0)
if [ "$(cat "$VENV/.rucat-connect-packages" 2>/dev/null)" != "${CONNECT_PACKAGES[*]}" ] ||
  ! "$VENV/bin/python" -c '
import sys
from importlib.util import find_spec
modules = "grpc grpc_status google.rpc google.protobuf pandas pyarrow zstandard requests prometheus_client".split()
sys.exit(any(find_spec(m) is None for m in modules))
' >/dev/null 2>&1; then
  say "installing the Spark Connect client packages (${CONNECT_PACKAGES[*]}) into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${CONNECT_PACKAGES[@]}" >&2
  echo "${CONNECT_PACKAGES[*]}" >"$VENV/.rucat-connect-packages"
fi

# $VENV/bin/pyspark (pip's copy of Spark's launcher) runs whatever `python3` comes first on PATH,
# and finds SPARK_HOME with it, which is not this virtualenv's Python unless the virtualenv is
# activated; so `$VENV/bin/pyspark --remote sc://...` would fail on "No module named 'pyspark'".
# A line after its shebang makes it default to this virtualenv's Python (PYSPARK_PYTHON still
# wins). Re-applied whenever pip rewrites the launcher.
LAUNCHER_MARK="# added by rucat's setup.sh"
PYSPARK_LAUNCHER_LINE="PYSPARK_PYTHON=\"\${PYSPARK_PYTHON:-$VENV/bin/python}\" $LAUNCHER_MARK"
if [ -f "$VENV/bin/pyspark" ] && ! grep -qxF "$PYSPARK_LAUNCHER_LINE" "$VENV/bin/pyspark"; then
  say "making $VENV/bin/pyspark default to $VENV/bin/python"
  {
    head -n 1 "$VENV/bin/pyspark"
    echo "$PYSPARK_LAUNCHER_LINE"
    tail -n +2 "$VENV/bin/pyspark" | grep -vF "$LAUNCHER_MARK" || true
  } >"$VENV/bin/pyspark.rucat-tmp"
  cat "$VENV/bin/pyspark.rucat-tmp" >"$VENV/bin/pyspark"
  rm -f "$VENV/bin/pyspark.rucat-tmp"
fi

# The Kubernetes manifest tools. helm-sdkpy declares Python >= 3.12 but works on 3.11 (its
# Python part is plain cffi over a bundled Go library), hence --ignore-requires-python. The
# pinned list is stamped into the virtualenv, so changing it reinstalls.
K8S_TOOLS="$CACHE_DIR/k8s-tools"
K8S_TOOLS_PACKAGES="cffi helm-sdkpy==0.1.32 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"
if [ "$WITH_K8S_TOOLS" = 1 ] && { [ ! -x "$K8S_TOOLS/bin/kubernetes-validate" ] ||
  [ "$(cat "$K8S_TOOLS/.rucat-packages" 2>/dev/null)" != "$K8S_TOOLS_PACKAGES" ] ||
  ! "$K8S_TOOLS/bin/python" -c 'import helm_sdkpy, helm_python, kubernetes_validate, yaml' >/dev/null 2>&1; }; then
  say "installing the Kubernetes manifest tools ($K8S_TOOLS_PACKAGES) into $K8S_TOOLS"
  make_venv "$K8S_TOOLS"
  # shellcheck disable=SC2086 # the list is words on purpose
  "$K8S_TOOLS/bin/pip" install --quiet --disable-pip-version-check --ignore-requires-python \
    $K8S_TOOLS_PACKAGES >&2
  echo "$K8S_TOOLS_PACKAGES" >"$K8S_TOOLS/.rucat-packages"
fi

# schemathesis, pinned (its command line differs between major versions), and
# openapi-spec-validator (checks the API's document against the OpenAPI 3.1 specification);
# stamped like the others, so changing a pin reinstalls.
SCHEMATHESIS="$CACHE_DIR/schemathesis"
SCHEMATHESIS_PACKAGES="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
if [ "$WITH_SCHEMATHESIS" = 1 ] && { [ ! -x "$SCHEMATHESIS/bin/st" ] ||
  [ "$(cat "$SCHEMATHESIS/.rucat-packages" 2>/dev/null)" != "$SCHEMATHESIS_PACKAGES" ]; }; then
  say "installing $SCHEMATHESIS_PACKAGES into $SCHEMATHESIS"
  make_venv "$SCHEMATHESIS"
  # shellcheck disable=SC2086 # the list is words on purpose
  "$SCHEMATHESIS/bin/pip" install --quiet --disable-pip-version-check $SCHEMATHESIS_PACKAGES >&2
  echo "$SCHEMATHESIS_PACKAGES" >"$SCHEMATHESIS/.rucat-packages"
fi

SPARK_HOME="$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
if [ ! -x "$SPARK_HOME/sbin/start-connect-server.sh" ] || ! ls "$SPARK_HOME"/jars/spark-connect_*.jar >/dev/null 2>&1; then
  say "pyspark at $SPARK_HOME lacks sbin/start-connect-server.sh or the Spark Connect jar"
  exit 1
fi

# Rucat's engine token check (engine-auth/), compiled against this Spark's Spark Connect jar
# (the interceptor implements its shaded gRPC interface) into jars/, which is on the classpath of
# every Spark process. Rebuilt only when the sources or the Spark Connect jar changed: their
# hashes are stamped into the virtualenv. Installed by a rename, so a concurrent run or a starting
# Spark never sees half a jar.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE_AUTH_SRC="$ROOT/engine-auth/src"
ENGINE_AUTH_JAR="$SPARK_HOME/jars/rucat-engine-auth.jar"
ENGINE_AUTH_STAMP="$VENV/.rucat-engine-auth"
CONNECT_JARS=("$SPARK_HOME"/jars/spark-connect_*.jar)
engine_auth_sources() { find "$ENGINE_AUTH_SRC" -name '*.java' -type f | LC_ALL=C sort; }
ENGINE_AUTH_HASH="$({
  engine_auth_sources | while IFS= read -r f; do
    echo "${f#"$ENGINE_AUTH_SRC"/}"
    sha256sum <"$f"
  done
  sha256sum <"${CONNECT_JARS[0]}"
} | sha256sum | cut -d' ' -f1)"
if [ ! -f "$ENGINE_AUTH_JAR" ] || [ "$(cat "$ENGINE_AUTH_STAMP" 2>/dev/null)" != "$ENGINE_AUTH_HASH" ]; then
  if ! command -v javac >/dev/null 2>&1 || ! command -v jar >/dev/null 2>&1 ||
    ! javac -version 2>&1 | grep -qE 'javac (1[7-9]|[2-9][0-9])'; then
    say "installing a JDK 17 (javac, for Rucat's engine token check)"
    apt_install openjdk-17-jdk-headless
  fi
  say "building $ENGINE_AUTH_JAR"
  ENGINE_AUTH_TMP="$(mktemp -d)"
  trap 'rm -rf "$ENGINE_AUTH_TMP"' EXIT
  mkdir "$ENGINE_AUTH_TMP/classes"
  engine_auth_sources >"$ENGINE_AUTH_TMP/sources"
  javac --release 17 -nowarn -cp "${CONNECT_JARS[0]}" -d "$ENGINE_AUTH_TMP/classes" \
    @"$ENGINE_AUTH_TMP/sources" >&2
  jar --create --file "$ENGINE_AUTH_TMP/rucat-engine-auth.jar" -C "$ENGINE_AUTH_TMP/classes" . >&2
  cp "$ENGINE_AUTH_TMP/rucat-engine-auth.jar" "$ENGINE_AUTH_JAR.tmp.$$"
  mv -f "$ENGINE_AUTH_JAR.tmp.$$" "$ENGINE_AUTH_JAR"
  echo "$ENGINE_AUTH_HASH" >"$ENGINE_AUTH_STAMP"
  rm -rf "$ENGINE_AUTH_TMP"
  trap - EXIT
fi

echo "$SPARK_HOME"
