#!/usr/bin/env python3
"""A small command-line Spark Connect client for Rucat's integration tests.

It drives PySpark's own Spark Connect client
(``SparkSession.builder.remote(url).getOrCreate()``), so a test sees exactly what a PySpark user
would see. Run it with the Python of the Spark virtualenv that scripts/setup.sh makes (it holds
pyspark and the Connect client packages):

    "${RUCAT_CACHE_DIR:-~/.cache/rucat}/spark-4.3.0/bin/python" scripts/spark_client.py \\
        select1 "sc://localhost:15002/;token=T;x-rucat-engine=ID"

Subcommands (URL is a Spark Connect connection string, handed to PySpark unchanged):

    select1  URL                 SELECT 1                        -> {"value": 1}
    collect  URL --rows N        spark.range(N) with columns id, id * 2 AS double,
                                 CAST(id AS STRING) AS text, fetched with toPandas()
                                 -> {"rows": N_received, "sum_id": ..., "sum_double": ...,
                                     "text_ok": true, "seconds": ...}
    sleep    URL --seconds S     a query that sleeps S seconds on the server, in the JVM (no
                                 Python worker): reflect('java.lang.Thread', 'sleep', S * 1000)
                                 -> {"seconds": elapsed}
    interrupt URL --seconds S    runs such a sleep for much longer than S in a thread, calls
                                 spark.interruptAll() after S seconds (again every 0.2 s until
                                 the server names an interrupted operation) and waits for the
                                 query to fail
                                 -> {"interrupted": true, "seconds": ..., "error_type": ...,
                                     "error_class": ..., "grpc_status": ..., "message": ...,
                                     "operations": [...]}
                                 (Spark 4.3.0: error_type "UnknownException", error_class
                                 "OPERATION_CANCELED", grpc_status "INTERNAL"; exits 1 if the
                                 query finished, or failed with anything else)
    conf-get URL --key K         spark.conf.get(K) -> {"value": "..."}, or when Spark says the
                                 key does not exist (SparkNoSuchElementException,
                                 SQL_CONF_NOT_FOUND, which comes as gRPC INTERNAL)
                                 {"value": null, "not_found": true, "error_class": ...}.
                                 Spark 4.3.0 answers not-found for
                                 spark.connect.authenticate.token even when the server was started
                                 with SPARK_CONNECT_AUTHENTICATE_TOKEN.
    sql      URL --query Q       spark.sql(Q).collect()
                                 -> {"columns": [...], "rows": [[...], ...]}; values are made
                                 JSON-able: Decimal -> string, date/time -> ISO 8601 string,
                                 binary -> base64 string, struct/map -> object,
                                 NaN/+-inf -> "NaN"/"Infinity"/"-Infinity"

Options (all subcommands):

    --tls-root FILE      sets GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=FILE before gRPC is loaded: the PEM
                         roots gRPC trusts for TLS channels (how a test trusts its own CA)
    --timeout SECONDS    bound on the whole run (default 120); when it passes the client asks
                         the server to interrupt its operations (interruptAll(), waiting at
                         most 2 s more), prints an error of type "TimeoutError" and exits 124
    --max-retries N      PySpark retries UNAVAILABLE (and errors carrying RetryInfo) with
                         exponential backoff, by default 15 times over about 10 minutes; this
                         sets that number (0: no retries), so a test expecting a refusal such as
                         UNAVAILABLE gets it at once. The default keeps PySpark's policy.

Output: progress and PySpark's own logging go to stderr; the LAST line on stdout is one JSON
object. Exit status 0 on success. On failure the JSON object is

    {"error": {"type": <exception class name>, "grpc_status": <gRPC status name or null>,
               "grpc_details": <the gRPC status message, e.g. "Invalid authentication token",
                                or null>,
               "message": <PySpark's message>, "error_class": <Spark error class or null>,
               "sql_state": <SQLSTATE or null>, "last_retried_grpc_status": <name or null>}}

with exit status 1 (2 for a usage error found by argparse, which prints to stderr only; 124 for
the timeout). "grpc_status" is the name of the gRPC status code ("UNAUTHENTICATED",
"PERMISSION_DENIED", "NOT_FOUND", "UNAVAILABLE", "INVALID_ARGUMENT", "INTERNAL", "UNKNOWN", ...)
when the error came over gRPC: PySpark turns every grpc.RpcError into a
pyspark.errors.exceptions.connect.SparkConnectGrpcException (or a subclass such as
AnalysisException, SparkNoSuchElementException, ...), which keeps the code
(getGrpcStatusCode()); a raw grpc.RpcError has .code(). It is null for errors that did not come
over gRPC (a bad URL, the client's own checks). "last_retried_grpc_status" is the status of the
last error PySpark retried, useful when a timeout cut a retry loop short.

What PySpark (4.3.0, pyspark/sql/connect/client/core.py, ChannelBuilder/DefaultChannelBuilder)
does with the connection string ``sc://HOST[:PORT]/;k1=v1;k2=v2``:

  * The port defaults to 15002. Parameters are split on ";" and then on "=" (a value holding "="
    must be percent-encoded, e.g. %3D, or PySpark rejects the URL); values are percent-decoded.
  * ``token=T`` is sent on every call as the gRPC metadata ``authorization: Bearer T``
    (grpc.access_token_call_credentials). Without ``token=`` in the URL PySpark takes the token
    from the environment variable SPARK_CONNECT_AUTHENTICATE_TOKEN. THIS SCRIPT REMOVES THAT
    VARIABLE from its environment, so the URL alone decides whether a token is sent.
  * TLS rule (DefaultChannelBuilder.toChannel): the channel is "secure" when ``use_ssl=true``
    (any case) or a token is present. Not secure: plaintext. Secure without ``use_ssl=true`` and
    with the host spelled exactly ``localhost`` (urlparse lowercases it; ``127.0.0.1`` or
    ``[::1]`` do NOT count): grpc.local_channel_credentials(), i.e. plaintext TCP that gRPC only
    allows to a loopback address, carrying the bearer token. Every other secure case (a token
    with any other host, or ``use_ssl=true`` with any host including localhost): TLS with
    grpc.ssl_channel_credentials() (default roots, or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, see
    --tls-root), plus the bearer token if any. So ``sc://127.0.0.1:P/;token=T`` attempts a TLS
    handshake, while ``sc://localhost:P/;token=T`` is plaintext.
  * Every other parameter except the ones PySpark consumes itself (token, use_ssl, user_id,
    user_agent, session_id, grpc_keepalive_enabled, grpc_keepalive_time_ms,
    grpc_keepalive_timeout_ms, grpc_keepalive_without_calls) is sent verbatim as gRPC metadata
    on EVERY call (ChannelBuilder.metadata() is passed to ExecutePlan, ReattachExecute,
    AnalyzePlan, Config, Interrupt, ReleaseSession, ReleaseExecute, FetchErrorDetails,
    AddArtifacts/ArtifactStatus, ...). So ``x-rucat-engine=ID`` reaches the server as the
    header ``x-rucat-engine: ID``; Spark ignores headers it does not know. (Checked against a
    Spark 4.3.0 server through a logging gRPC pass-through proxy: every Config, ExecutePlan,
    ReleaseExecute, Interrupt, FetchErrorDetails and ReleaseSession call carried both
    ``x-rucat-engine`` and ``authorization: Bearer``; a session's first call is Config.) gRPC
    metadata keys must be lowercase: ``X-Rucat-Engine=...`` fails in the client with
    ValueError "metadata was invalid", before anything is sent. user_id goes into each
    request's UserContext (default $SPARK_USER or $USER), user_agent into client_type,
    session_id (a UUID) fixes the session id.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import decimal
import json
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional

TIMEOUT_EXIT = 124

# Set whenever PySpark's retry policy decides to retry an error (see connect()).
_last_retried_status: Optional[str] = None
_output_lock = threading.Lock()
_output_done = False


def log(message: str) -> None:
    print(f"spark_client: {message}", file=sys.stderr, flush=True)


def emit(obj: Dict[str, Any], code: int) -> NoReturn:
    """Prints obj as the last stdout line and ends the process at once (no atexit hooks, no
    waiting for gRPC threads or a still running query thread)."""
    global _output_done
    with _output_lock:
        if not _output_done:
            _output_done = True
            sys.stderr.flush()
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()
        os._exit(code)


# --- errors -----------------------------------------------------------------------------------


def _status_name(code: Any) -> Optional[str]:
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else None


def grpc_status_of(error: BaseException) -> Optional[str]:
    """The gRPC status name an error carries, looking through its cause/context chain."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        getter = getattr(current, "getGrpcStatusCode", None)  # SparkConnectGrpcException
        if callable(getter):
            name = _status_name(getter())
            if name is not None:
                return name
        code = getattr(current, "code", None)  # grpc.RpcError (a grpc.Call)
        if callable(code):
            try:
                name = _status_name(code())
            except Exception:  # noqa: BLE001 - not a grpc.Call after all
                name = None
            if name is not None:
                return name
        current = current.__cause__ or current.__context__
    return None


def grpc_details_of(error: BaseException) -> Optional[str]:
    """The status message (details) of the grpc.RpcError behind an error, if any."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        details = getattr(current, "details", None)
        if callable(details):
            try:
                value = details()
            except Exception:  # noqa: BLE001
                value = None
            if isinstance(value, str):
                return value
        current = current.__cause__ or current.__context__
    return None


def _call_str(error: BaseException, method: str) -> Optional[str]:
    getter = getattr(error, method, None)
    if not callable(getter):
        return None
    try:
        value = getter()
    except Exception:  # noqa: BLE001
        return None
    return value if isinstance(value, str) else None


def error_info(error: BaseException) -> Dict[str, Any]:
    message = _call_str(error, "getMessage") or str(error) or repr(error)
    return {
        "type": type(error).__name__,
        "grpc_status": grpc_status_of(error),
        "grpc_details": grpc_details_of(error),
        "message": message,
        "error_class": _call_str(error, "getCondition"),
        "sql_state": _call_str(error, "getSqlState"),
        "last_retried_grpc_status": _last_retried_status,
    }


def fail(error: BaseException) -> NoReturn:
    emit({"error": error_info(error)}, 1)


def fail_with(kind: str, message: str, code: int = 1) -> NoReturn:
    emit(
        {
            "error": {
                "type": kind,
                "grpc_status": None,
                "grpc_details": None,
                "message": message,
                "error_class": None,
                "sql_state": None,
                "last_retried_grpc_status": _last_retried_status,
            }
        },
        code,
    )


# --- the session ------------------------------------------------------------------------------


def connect(url: str, max_retries: Optional[int]) -> Any:
    """A Spark Connect session for url (no RPC is made until the first query)."""
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.client.retries import DefaultPolicy, RetryPolicyState

    class _RecordingState(RetryPolicyState):
        def next_attempt(self, exception: Optional[BaseException] = None) -> Optional[int]:
            global _last_retried_status
            wait = super().next_attempt(exception)
            if wait is not None and exception is not None:
                _last_retried_status = grpc_status_of(exception)
                log(
                    f"PySpark retries in {wait} ms after {type(exception).__name__} "
                    f"({_last_retried_status})"
                )
            return wait

    class _RecordingPolicy(DefaultPolicy):
        def to_state(self) -> RetryPolicyState:
            return _RecordingState(self)

    spark = SparkSession.builder.remote(url).getOrCreate()
    options: Dict[str, Any] = {}
    if max_retries is not None:
        options["max_retries"] = max_retries
    spark.client.set_retry_policies([_RecordingPolicy(**options)])
    return spark


def sleep_expr(seconds: float) -> str:
    millis = max(0, int(round(seconds * 1000)))
    # java.lang.Thread.sleep(long) is static; reflect() runs it inside the executor's JVM.
    return f"reflect('java.lang.Thread', 'sleep', CAST({millis} AS BIGINT)) AS slept"


# --- JSON values ------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    from pyspark.sql import Row

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Row):
        return {k: jsonable(v) for k, v in value.asDict(recursive=False).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return str(value)


# --- subcommands ------------------------------------------------------------------------------


def cmd_select1(spark: Any, args: argparse.Namespace) -> Dict[str, Any]:
    rows = spark.sql("SELECT 1 AS value").collect()
    return {"value": rows[0][0]}


def cmd_collect(spark: Any, args: argparse.Namespace) -> Dict[str, Any]:
    df = spark.range(args.rows).selectExpr(
        "id", "id * 2 AS double", "CAST(id AS STRING) AS text"
    )
    start = time.monotonic()
    pdf = df.toPandas()
    seconds = time.monotonic() - start
    received = int(len(pdf))
    sum_id = int(pdf["id"].sum()) if received else 0
    sum_double = int(pdf["double"].sum()) if received else 0
    text_ok = bool((pdf["text"] == pdf["id"].astype(str)).all()) if received else True
    return {
        "rows": received,
        "sum_id": sum_id,
        "sum_double": sum_double,
        "text_ok": text_ok,
        "seconds": round(seconds, 3),
    }


def cmd_sleep(spark: Any, args: argparse.Namespace) -> Dict[str, Any]:
    start = time.monotonic()
    spark.range(1).selectExpr(sleep_expr(args.seconds)).collect()
    return {"seconds": round(time.monotonic() - start, 3)}


def _is_interruption(error: BaseException) -> bool:
    text = " ".join(
        filter(
            None,
            [
                _call_str(error, "getCondition"),
                str(error),
            ],
        )
    ).upper()
    return any(word in text for word in ("OPERATION_CANCELED", "CANCELLED", "INTERRUPT"))


def cmd_interrupt(spark: Any, args: argparse.Namespace) -> Dict[str, Any]:
    long_seconds = max(args.seconds * 20, args.seconds + 120)
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            spark.range(1).selectExpr(sleep_expr(long_seconds)).collect()
            outcome["finished"] = True
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    start = time.monotonic()
    worker = threading.Thread(target=run, name="long-query", daemon=True)
    worker.start()
    time.sleep(args.seconds)
    operations: List[str] = []
    # The long query may not have reached the server yet; interrupt until it names one.
    while worker.is_alive():
        operations = list(spark.interruptAll())
        log(f"interruptAll() after {time.monotonic() - start:.2f}s: {operations}")
        if operations:
            break
        time.sleep(0.2)
    worker.join(timeout=max(30.0, args.seconds * 2))
    seconds = time.monotonic() - start
    if worker.is_alive():
        raise RuntimeError(
            f"the long query was still running {seconds:.1f}s after start "
            f"(interruptAll() returned {operations})"
        )
    if outcome.get("finished"):
        raise RuntimeError("the long query finished without being interrupted")
    error = outcome["error"]
    if not _is_interruption(error):
        raise error
    info = error_info(error)
    return {
        "interrupted": True,
        "seconds": round(seconds, 3),
        "error_type": info["type"],
        "error_class": info["error_class"],
        "grpc_status": info["grpc_status"],
        "message": info["message"],
        "operations": operations,
    }


def cmd_conf_get(spark: Any, args: argparse.Namespace) -> Dict[str, Any]:
    try:
        return {"value": spark.conf.get(args.key)}
    except Exception as e:  # noqa: BLE001
        # Spark answers an unknown key with SparkNoSuchElementException, SQL_CONF_NOT_FOUND.
        condition = _call_str(e, "getCondition") or ""
        if condition == "SQL_CONF_NOT_FOUND" or type(e).__name__ == "SparkNoSuchElementException":
            return {"value": None, "not_found": True, "error_class": condition or None}
        raise


def cmd_sql(spark: Any, args: argparse.Namespace) -> Dict[str, Any]:
    df = spark.sql(args.query)
    rows = df.collect()
    return {"columns": list(df.columns), "rows": [[jsonable(v) for v in row] for row in rows]}


COMMANDS: Dict[str, Callable[[Any, argparse.Namespace], Dict[str, Any]]] = {
    "select1": cmd_select1,
    "collect": cmd_collect,
    "sleep": cmd_sleep,
    "interrupt": cmd_interrupt,
    "conf-get": cmd_conf_get,
    "sql": cmd_sql,
}


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: List[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("url", help="Spark Connect URL, e.g. sc://localhost:15002/;token=T")
    common.add_argument("--tls-root", metavar="FILE", help="PEM roots gRPC trusts for TLS")
    common.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="bound on the whole run"
    )
    common.add_argument(
        "--max-retries",
        type=int,
        default=None,
        metavar="N",
        help="PySpark's retries of UNAVAILABLE errors (default: PySpark's, 15)",
    )
    parser = argparse.ArgumentParser(
        description="Spark Connect test client (PySpark); prints one JSON object last on stdout"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("select1", parents=[common], help="SELECT 1")
    p = sub.add_parser("collect", parents=[common], help="spark.range(N) .toPandas()")
    p.add_argument("--rows", type=int, required=True)
    p = sub.add_parser("sleep", parents=[common], help="a query sleeping S seconds")
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("interrupt", parents=[common], help="interruptAll() a long query")
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("conf-get", parents=[common], help="spark.conf.get(K)")
    p.add_argument("--key", required=True)
    p = sub.add_parser("sql", parents=[common], help="run a SQL query")
    p.add_argument("--query", required=True)
    args = parser.parse_args(argv)
    if not args.url.startswith("sc://"):
        parser.error(f"the URL must start with sc:// (got {args.url!r})")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: List[str]) -> NoReturn:
    args = parse_args(argv)
    start = time.monotonic()

    session: List[Any] = []

    def on_timeout() -> None:
        if session:
            # Best effort, at most 2 s: do not leave the query running on the server.
            stopper = threading.Thread(target=session[0].interruptAll, daemon=True)
            stopper.start()
            stopper.join(2.0)
        fail_with(
            "TimeoutError",
            f"{args.command} did not finish within {args.timeout:g}s",
            TIMEOUT_EXIT,
        )

    watchdog = threading.Timer(args.timeout, on_timeout)
    watchdog.daemon = True
    watchdog.start()

    # The URL alone decides whether a token is sent (see the module docstring).
    os.environ.pop("SPARK_CONNECT_AUTHENTICATE_TOKEN", None)
    if args.tls_root is not None:
        if not os.path.isfile(args.tls_root):
            fail_with("FileNotFoundError", f"--tls-root {args.tls_root}: no such file")
        # Read by gRPC when it first loads its default roots, so before any channel exists.
        os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = os.path.abspath(args.tls_root)

    try:
        spark = connect(args.url, args.max_retries)
        session.append(spark)
        result = COMMANDS[args.command](spark, args)
    except BaseException as e:  # noqa: BLE001 - every failure becomes the JSON error
        fail(e)
    try:
        spark.stop()  # releases the server-side session
    except Exception as e:  # noqa: BLE001 - the result stands
        log(f"stopping the session failed: {e!r}")
    log(f"{args.command} done in {time.monotonic() - start:.2f}s")
    emit(result, 0)


if __name__ == "__main__":
    main(sys.argv[1:])
