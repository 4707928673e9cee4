//! `metrics_overhead`: what Prometheus metrics cost.
//!
//! 1. Scrape time: `GET /metrics` on the real Rucat router (metrics on) over a store holding
//!    `--engines` engines spread over every state, SQLite and PostgreSQL (a scratch database on
//!    `--postgres-url`, else `$RUCAT_TEST_POSTGRES_URL`, else the local test server; `--stores`
//!    picks), `--scrapes` times each after `--warmup-scrapes`; beside it the time of the store's
//!    `count_by_state` query alone (the `GROUP BY` every scrape runs).
//! 2. Request cost: requests per second of `GET /engines/{id}` on two Rucat routers over one
//!    SQLite store of 1000 engines, side by side in one process: metrics off (no middleware, no
//!    `/metrics`) and metrics on (every request counted and timed by route, method and status).
//!    Every round runs each router once; the order alternates. The load generator runs on its
//!    own runtime: `--connections` keep-alive HTTP/1.1 connections for `--round-secs`.
//!
//! 3. Recording alone, outside HTTP: nanoseconds per `Metrics::request` (what the middleware adds
//!    per request, its clock reads aside), on one thread and on two at once (the shared read
//!    lock's cost under contention), `--records` calls per thread.
//!
//! Flags: `--records N` (2000000), `--engines N` (10000), `--scrapes N` (50), `--warmup-scrapes N` (5), `--stores LIST`
//! (`sqlite,postgres`), `--rounds N` (10), `--round-secs S` (3), `--warmup-secs S` (2),
//! `--connections N` (32), `--server-threads N` (1), `--client-threads N` (1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rucat::engine::{Engine, EngineId, EngineName, EngineState, EngineType};
use rucat::metrics::Metrics;
use rucat::server::{self, ApiContext};
use rucat::shutdown;
use rucat::store::postgres::{PostgresStore, ScratchDatabase};
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Store, StoreOptions};
use rucat_bench::http_load::{load, Error};
use rucat_bench::{
    flag, flag_str, machine_line, median, ms, percentile, postgres_admin_url, print_table,
};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

fn runtime(name: &str, threads: usize) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
}

fn seed_engine(i: usize, state: EngineState) -> Engine {
    let now = Utc::now();
    Engine {
        id: EngineId::generate(),
        name: EngineName::parse(&format!("bench-{i:05}"))
            .unwrap_or_else(|_| unreachable!("bench-NNNNN is a valid engine name")),
        owner: rucat::auth::ANONYMOUS.to_owned(),
        engine_type: EngineType::Spark,
        version: "4.3.0".to_owned(),
        state,
        error: None,
        configs: BTreeMap::from([("spark.executor.memory".to_owned(), "2g".to_owned())]),
        endpoint: None,
        create_time: now,
        update_time: now,
        next_update_time: None,
        idle_timeout_minutes: 0,
        secret: None,
        generation: 0,
        failures: 0,
        failing_since: None,
        pool: None,
        handover_secret: None,
    }
}

/// Inserts `count` engines, their states cycling over every state, with `tasks` writers.
async fn seed(store: &Arc<dyn Store>, count: usize, tasks: usize) -> Result<Vec<String>, Error> {
    let mut writers = tokio::task::JoinSet::new();
    let per = count.div_ceil(tasks.max(1));
    for t in 0..tasks.max(1) {
        let store = Arc::clone(store);
        writers.spawn(async move {
            let mut paths = Vec::new();
            for i in t * per..((t + 1) * per).min(count) {
                let state = EngineState::ALL[i % EngineState::ALL.len()];
                let engine = seed_engine(i, state);
                store.insert(&engine).await?;
                paths.push(format!("/engines/{}", engine.id));
            }
            Ok::<_, Error>(paths)
        });
    }
    let mut paths = Vec::with_capacity(count);
    while let Some(joined) = writers.join_next().await {
        paths.extend(joined??);
    }
    Ok(paths)
}

/// Serves the Rucat router over `store` (metrics on or off) on a free port.
async fn serve(
    store: Arc<dyn Store>,
    metrics: bool,
    shutdown: shutdown::Shutdown,
) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let context = ApiContext {
        metrics: metrics.then(|| Arc::new(Metrics::new(Some(Arc::clone(&store))))),
        ..ApiContext::new(store, vec!["4.3.0".to_owned()])
    };
    tokio::spawn(server::serve(listener, context, shutdown));
    Ok(addr)
}

struct Scrapes {
    store: &'static str,
    engines: usize,
    bytes: usize,
    scrape_ms: Vec<f64>,
    query_ms: Vec<f64>,
}

async fn scrape_times(
    name: &'static str,
    store: Arc<dyn Store>,
    engines: usize,
    scrapes: usize,
    warmup: usize,
    shutdown: shutdown::Shutdown,
) -> Result<Scrapes, Error> {
    let started = Instant::now();
    seed(&store, engines, 8).await?;
    eprintln!(
        "{name}: {engines} engines in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let addr = serve(Arc::clone(&store), true, shutdown).await?;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");
    let (mut scrape_ms, mut query_ms, mut bytes) = (Vec::new(), Vec::new(), 0);
    for i in 0..warmup + scrapes {
        let started = Instant::now();
        let text = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let took = started.elapsed();
        if !text.contains("rucat_engines{state=\"Running\"}") {
            return Err(format!("{name}: the page has no engines by state: {text}").into());
        }
        let started = Instant::now();
        let counts = store.count_by_state().await?;
        let query = started.elapsed();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        if total != engines as u64 {
            return Err(format!("{name}: counted {total} engines, not {engines}").into());
        }
        if i >= warmup {
            scrape_ms.push(ms(took));
            query_ms.push(ms(query));
            bytes = text.len();
        }
    }
    Ok(Scrapes {
        store: name,
        engines,
        bytes,
        scrape_ms,
        query_ms,
    })
}

fn main() -> Result<(), Error> {
    let engines: usize = flag("engines", 10_000);
    let scrapes: usize = flag("scrapes", 50);
    let warmup_scrapes: usize = flag("warmup-scrapes", 5);
    let stores = flag_str("stores").unwrap_or_else(|| "sqlite,postgres".to_owned());
    let rounds: usize = flag("rounds", 10);
    let round_secs: f64 = flag("round-secs", 3.0);
    let warmup_secs: f64 = flag("warmup-secs", 2.0);
    let connections: usize = flag("connections", 32);
    let server_threads: usize = flag("server-threads", 1);
    let client_threads: usize = flag("client-threads", 1);
    let records: usize = flag("records", 2_000_000);

    let server_rt = runtime("server", server_threads)?;
    let client_rt = runtime("client", client_threads)?;
    let dir = tempfile::tempdir()?;
    let (trigger, shutdown) = shutdown::channel();

    // 1. Scrape time.
    let mut scraped = Vec::new();
    let admin_url = postgres_admin_url();
    let mut scratch = None;
    for store in stores.split(',').map(str::trim) {
        let result = server_rt.block_on(async {
            match store {
                "sqlite" => {
                    let url = format!("sqlite://{}", dir.path().join("scrape.db").display());
                    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
                    scrape_times(
                        "SQLite",
                        store,
                        engines,
                        scrapes,
                        warmup_scrapes,
                        shutdown.clone(),
                    )
                    .await
                }
                "postgres" => {
                    let database = ScratchDatabase::create(&admin_url, "bench_metrics")
                        .await
                        .map_err(|e| {
                            format!("cannot create a scratch database through {admin_url}: {e}")
                        })?;
                    let store: Arc<dyn Store> = Arc::new(
                        PostgresStore::open(database.url(), &StoreOptions::default()).await?,
                    );
                    scratch = Some(database);
                    scrape_times(
                        "PostgreSQL",
                        store,
                        engines,
                        scrapes,
                        warmup_scrapes,
                        shutdown.clone(),
                    )
                    .await
                }
                other => Err(format!("unknown store {other:?}").into()),
            }
        })?;
        scraped.push(result);
    }

    // 2. GET /engines/{id} with metrics off and on, side by side.
    let (addrs, paths) = server_rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("get.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
        let mut paths = Vec::new();
        for i in 0..1000 {
            let engine = seed_engine(i, EngineState::Running);
            store.insert(&engine).await?;
            paths.push(format!("/engines/{}", engine.id));
        }
        let off = serve(Arc::clone(&store), false, shutdown.clone()).await?;
        let on = serve(store, true, shutdown.clone()).await?;
        Ok::<_, Error>(([off, on], paths))
    })?;
    let paths = Arc::new(paths);
    let run = |target: usize, secs: f64| {
        client_rt.block_on(load(
            addrs[target],
            paths.clone(),
            connections,
            Duration::from_secs_f64(secs),
            None,
        ))
    };
    for target in 0..2 {
        run(target, warmup_secs)?;
    }
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut ratios = Vec::new();
    let mut table = Vec::new();
    for r in 0..rounds {
        let mut rate = [0.0; 2];
        for k in 0..2 {
            let target = (r + k) % 2;
            rate[target] = run(target, round_secs)?.rate();
            rates[target].push(rate[target]);
        }
        ratios.push(rate[1] / rate[0]);
        table.push(vec![
            (r + 1).to_string(),
            if r % 2 == 0 { "off, on" } else { "on, off" }.to_owned(),
            format!("{:.0}", rate[0]),
            format!("{:.0}", rate[1]),
            format!("{:.3}", rate[1] / rate[0]),
        ]);
    }
    let (metrics_page, _) = client_rt.block_on(async {
        let text = reqwest::get(format!("http://{}/metrics", addrs[1]))
            .await?
            .text()
            .await?;
        Ok::<_, Error>((text, ()))
    })?;
    let counted: f64 = metrics_page
        .lines()
        .filter(|l| {
            l.starts_with(
                "rucat_http_requests_total{route=\"/engines/{id}\",method=\"GET\",status=\"200\"}",
            )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();

    // 3. Recording alone.
    let record_ns = |threads: usize| {
        let metrics = Arc::new(Metrics::new(None));
        let get = axum::http::Method::GET;
        metrics.request("/engines/{id}", &get, 200, Duration::from_micros(50));
        let started = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (metrics, get) = (Arc::clone(&metrics), get.clone());
                scope.spawn(move || {
                    for i in 0..records {
                        let took = Duration::from_nanos(((i + t) % 4096) as u64 * 1000);
                        metrics.request("/engines/{id}", &get, 200, took);
                    }
                });
            }
        });
        started.elapsed().as_nanos() as f64 / records as f64
    };
    let recorded = [(1, record_ns(1)), (2, record_ns(2))];

    trigger.fire();
    drop(client_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    drop(scratch);

    println!("### metrics_overhead — {}\n", machine_line());
    println!(
        "Scrape time of `GET /metrics` (HTTP, over loopback) with {engines} engines over every state, {scrapes} scrapes after {warmup_scrapes}; the `count_by_state` query alone beside it:\n"
    );
    let rows: Vec<Vec<String>> = scraped
        .iter()
        .map(|s| {
            vec![
                s.store.to_owned(),
                s.engines.to_string(),
                format!("{:.2}", median(&s.scrape_ms)),
                format!("{:.2}", percentile(&s.scrape_ms, 95.0)),
                format!("{:.2}", median(&s.query_ms)),
                s.bytes.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "store",
            "engines",
            "scrape median ms",
            "scrape p95 ms",
            "GROUP BY query median ms",
            "page bytes",
        ],
        &rows,
    );
    println!(
        "\n`GET /engines/{{id}}` requests per second, metrics off and on, {rounds} rounds of {round_secs} s per router, {connections} keep-alive connections, 1000 engines in SQLite; server runtime {server_threads} thread(s), client runtime {client_threads} thread(s):\n"
    );
    print_table(
        &["round", "order", "off req/s", "on req/s", "on / off"],
        &table,
    );
    println!();
    print_table(
        &["", "off", "on", "on / off"],
        &[
            vec![
                "median req/s".to_owned(),
                format!("{:.0}", median(&rates[0])),
                format!("{:.0}", median(&rates[1])),
                format!("{:.3}", median(&rates[1]) / median(&rates[0])),
            ],
            vec![
                "median of per-round on / off".to_owned(),
                String::new(),
                String::new(),
                format!("{:.3}", median(&ratios)),
            ],
        ],
    );
    println!(
        "\nRecording one request outside HTTP (`Metrics::request`, {records} calls per thread):\n"
    );
    print_table(
        &[
            "threads at once",
            "ns per call (wall time / calls per thread)",
        ],
        &recorded
            .iter()
            .map(|(threads, ns)| vec![threads.to_string(), format!("{ns:.1}")])
            .collect::<Vec<_>>(),
    );
    println!(
        "\nThe metrics-on router counted {counted:.0} `GET /engines/{{id}}` 200 answers (its share of the warm-up and the rounds)."
    );
    Ok(())
}
