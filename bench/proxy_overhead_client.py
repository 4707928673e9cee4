#!/usr/bin/env python3
"""The PySpark side of the `proxy_overhead` benchmark (bench/src/bin/proxy_overhead.rs).

One run is one target in one round: one Spark Connect session (PySpark's own client,
``SparkSession.builder.remote(URL).create()``), made before anything is timed, then

  0. warm-up, not timed: one of each operation below;
  1. "collect": COLLECTS timed ``spark.range(ROWS).selectExpr("id", "id * 2 AS double",
     "CAST(id AS STRING) AS text").toPandas()`` (Arrow batches into a pandas DataFrame);
  2. "select": CALLS timed ``spark.sql("SELECT 1 AS one").collect()``, one after the other;
  3. "config": CALLS timed ``spark.conf.get(CONF_KEY)``: one Config RPC each, which the server
     answers without running a query, so that the cost of one proxied call shows on its own;

every result checked after its timing (the collect's row count, sum and last text value). Then
the session is stopped. Run it with the Python of the Spark virtualenv
(``~/.cache/rucat/spark-4.3.0/bin/python``):

    python bench/proxy_overhead_client.py URL --rows 1000000 --collects 2 --calls 200 \\
        [--conf-key spark.sql.shuffle.partitions] [--metrics http://127.0.0.1:PORT/metrics] \\
        [--timeout 600] [--no-reattach]

``--metrics`` names a Rucat proxy's /metrics page (https: trusted through the CA file in
GRPC_DEFAULT_SSL_ROOTS_FILE_PATH). It is read, outside the timing, before and after each timed
part, and the differences (calls forwarded, bytes each way) are reported, so that the calls per
operation are counted, not guessed. The client also counts and times its own RPCs by gRPC method
(its stub's methods are wrapped: a call is timed until its answer, a stream until its last
message).
``--cpu-pid PID``: the CPU time process PID (a proxy) used during each timed part is reported
too. TLS: set GRPC_DEFAULT_SSL_ROOTS_FILE_PATH to the CA's PEM file.

Output: the LAST line on stdout is one JSON object:
``{"times": {"collect": [s...], "select": [ms...], "config": [ms...]}, "connect_s": ...,
"metrics": {PART: {"calls", "bytes_to_engine", "bytes_to_client"}} | null,
"rpcs": {PART: {METHOD: {"calls": N, "p50_ms": ms, "mean_ms": ms, "messages": per stream}}},
"cpu_ms": {PART: ms}}``; on failure ``{"error": "..."}`` and exit status 1 (124 when
--timeout passed).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import threading
import time
import traceback
import urllib.request
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

COLUMNS = ("id", "id * 2 AS double", "CAST(id AS STRING) AS text")


def emit(obj: Dict[str, Any], code: int) -> NoReturn:
    sys.stderr.flush()
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    os._exit(code)


def read_metrics(url: Optional[str]) -> Optional[Dict[str, int]]:
    """The proxy's counters: calls forwarded and bytes each way."""
    if url is None:
        return None
    context = None
    if url.startswith("https:"):
        # The TLS proxy's /metrics, with the same test CA gRPC trusts.
        context = ssl.create_default_context(
            cafile=os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
        )
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        text = response.read().decode()
    counters = {"calls": 0, "bytes_to_engine": 0, "bytes_to_client": 0}
    for line in text.splitlines():
        if line.startswith("rucat_proxy_streams_total "):
            counters["calls"] = int(line.split()[-1])
        elif line.startswith('rucat_proxy_bytes_total{direction="to_engine"}'):
            counters["bytes_to_engine"] = int(line.split()[-1])
        elif line.startswith('rucat_proxy_bytes_total{direction="to_client"}'):
            counters["bytes_to_client"] = int(line.split()[-1])
    return counters


def cpu_ms(pid: Optional[int]) -> Optional[float]:
    """The CPU time (user + system) process pid has used, in ms (clock-tick resolution)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


# The methods that answer with a stream of messages.
STREAMING = ("ExecutePlan", "ReattachExecute")


class Rpcs:
    """What the session's RPCs did, by timed part and gRPC method: how many calls, how long each
    took (from the call until its answer, or for a stream until its last message) and how many
    messages each stream brought. A call belongs to the part under way when it was made."""

    def __init__(self) -> None:
        self.part = "warm-up"
        self.counts: Dict[Tuple[str, str], int] = {}
        # Appended to from the release threads too (list appends are atomic in CPython).
        self.ms: Dict[Tuple[str, str], List[float]] = {}
        self.messages: Dict[Tuple[str, str], List[int]] = {}

    def summary(self, part: str) -> Dict[str, Any]:
        """Per method: calls, the median time of a call (ms), messages per stream."""
        out: Dict[str, Any] = {}
        for (in_part, method), calls in sorted(self.counts.items()):
            if in_part != part:
                continue
            times = self.ms.get((part, method), [])
            messages = self.messages.get((part, method), [])
            out[method] = {
                "calls": calls,
                "p50_ms": statistics.median(times) if times else None,
                "mean_ms": statistics.mean(times) if times else None,
                "messages": statistics.mean(messages) if messages else None,
            }
        return out


class TimedStream:
    """A stream of answers that records how long it took until its last message (when it ends,
    or when the client drops it: PySpark stops reading a stream once it saw its result complete)
    and how many messages it had."""

    def __init__(self, inner: Any, key: Tuple[str, str], start: float, rpcs: Rpcs) -> None:
        self.inner, self.key, self.rpcs = inner, key, rpcs
        self.start = self.last = start
        self.count = 0
        self.recorded = False

    def __iter__(self) -> "TimedStream":
        return self

    def __next__(self) -> Any:
        try:
            item = next(self.inner)
        except StopIteration:
            self.record()
            raise
        self.last = time.perf_counter()
        self.count += 1
        return item

    def record(self) -> None:
        if not self.recorded:
            self.recorded = True
            self.rpcs.ms.setdefault(self.key, []).append((self.last - self.start) * 1000.0)
            self.rpcs.messages.setdefault(self.key, []).append(self.count)

    def __del__(self) -> None:
        self.record()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


class Timed:
    """A gRPC method of the client's stub that counts and times its calls."""

    def __init__(self, name: str, inner: Any, rpcs: Rpcs) -> None:
        self.name, self.inner, self.rpcs = name, inner, rpcs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = (self.rpcs.part, self.name)
        self.rpcs.counts[key] = self.rpcs.counts.get(key, 0) + 1
        start = time.perf_counter()
        answer = self.inner(*args, **kwargs)
        if self.name in STREAMING:
            return TimedStream(answer, key, start, self.rpcs)
        self.rpcs.ms.setdefault(key, []).append((time.perf_counter() - start) * 1000.0)
        return answer

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def time_rpcs(spark: Any) -> Rpcs:
    """Makes every RPC of the session's client (its one stub, which the reattaching iterators
    share) count and time itself."""
    rpcs = Rpcs()
    stub = spark.client._internal_stub
    for name in list(vars(stub)):
        if name[:1].isupper():
            setattr(stub, name, Timed(name, getattr(stub, name), rpcs))
    return rpcs


def main() -> NoReturn:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--collects", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--conf-key", default="spark.sql.shuffle.partitions")
    parser.add_argument("--metrics", default=None)
    parser.add_argument("--cpu-pid", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--no-reattach",
        action="store_true",
        help="turn PySpark's reattachable execution off (a diagnostic: no ReleaseExecute calls)",
    )
    args = parser.parse_args()

    watchdog = threading.Timer(
        args.timeout,
        lambda: emit({"error": f"not done within {args.timeout:g} s"}, 124),
    )
    watchdog.daemon = True
    watchdog.start()
    # The URL alone decides whether a token is sent.
    os.environ.pop("SPARK_CONNECT_AUTHENTICATE_TOKEN", None)

    times: Dict[str, list] = {}
    metrics: Optional[Dict[str, Any]] = {} if args.metrics else None
    rpcs_per_part: Dict[str, Dict[str, Any]] = {}
    cpu_per_part: Dict[str, float] = {}
    try:
        from pyspark.sql import SparkSession

        started = time.perf_counter()
        spark = SparkSession.builder.remote(args.url).create()
        rpcs = time_rpcs(spark)
        if args.no_reattach:
            spark.client.disable_reattachable_execute()
        frame = spark.range(args.rows).selectExpr(*COLUMNS)

        def collect() -> Any:
            return frame.toPandas()

        def check_collect(pdf: Any) -> None:
            if len(pdf) != args.rows or int(pdf["id"].sum()) != args.rows * (args.rows - 1) // 2:
                raise RuntimeError(f"collect: {len(pdf)} rows, not {args.rows}")
            if args.rows and pdf["text"].iloc[-1] != str(args.rows - 1):
                raise RuntimeError("collect: the text column is wrong")

        def select1() -> Any:
            return spark.sql("SELECT 1 AS one").collect()

        def check_select1(rows: Any) -> None:
            if rows[0][0] != 1:
                raise RuntimeError(f"SELECT 1 answered {rows!r}")

        def config() -> Any:
            return spark.conf.get(args.conf_key)

        def check_config(value: Any) -> None:
            if not value:
                raise RuntimeError(f"{args.conf_key} is empty")

        check_select1(select1())
        connect_s = time.perf_counter() - started
        check_collect(collect())
        check_config(config())

        parts: Dict[str, Tuple[Callable[[], Any], Callable[[Any], None], int, float]] = {
            "collect": (collect, check_collect, args.collects, 1.0),
            "select": (select1, check_select1, args.calls, 1000.0),
            "config": (config, check_config, args.calls, 1000.0),
        }
        for part, (operation, check, count, scale) in parts.items():
            before = read_metrics(args.metrics)
            rpcs.part = part
            cpu_before = cpu_ms(args.cpu_pid)
            took = []
            for _ in range(count):
                begin = time.perf_counter()
                result = operation()
                took.append((time.perf_counter() - begin) * scale)
                check(result)
                del result
            times[part] = took
            cpu_after = cpu_ms(args.cpu_pid)
            if cpu_before is not None and cpu_after is not None:
                cpu_per_part[part] = cpu_after - cpu_before
            after = read_metrics(args.metrics)
            if metrics is not None and before is not None and after is not None:
                metrics[part] = {key: after[key] - before[key] for key in after}
        rpcs.part = "after"
        spark.stop()
        rpcs_per_part = {part: rpcs.summary(part) for part in parts}
    except BaseException as e:  # noqa: BLE001 - every failure becomes the JSON error
        traceback.print_exc()
        emit({"error": f"{type(e).__name__}: {e}"}, 1)
    emit(
        {
            "times": times,
            "connect_s": connect_s,
            "metrics": metrics,
            "rpcs": rpcs_per_part,
            "cpu_ms": cpu_per_part,
        },
        0,
    )


if __name__ == "__main__":
    main()
