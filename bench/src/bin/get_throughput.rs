//! `get_throughput`: requests per second of `GET /engines/{id}` on the real Rucat router over a
//! real SQLite store holding `--engines` engines, against a bare axum handler that serializes the
//! same engine record from memory, on the same kind of route. A third server, "store", is the
//! bare handler reading the engine from the same store (`Store::get`) instead of memory, so that
//! the store's share of the gap shows apart from the router's. A fourth, "rucat-pg", is the real
//! router over a PostgreSQL store (a scratch database holding the same engines, dropped at the
//! end). All servers run in one process, on one server runtime; the load generator runs on its
//! own runtime (its own threads), so that every server faces the same client. Every round runs
//! each server once; the order rotates.
//!
//! The load generator: `--connections` keep-alive HTTP/1.1 connections (hyper), one task each,
//! sending one request at a time for `--round-secs`; connection `c` cycles over the ids starting
//! at `c`.
//!
//! Flags: `--rounds N` (default 5), `--round-secs S` (5), `--warmup-secs S` (2),
//! `--connections N` (32), `--engines N` (1000), `--server-threads N` (1), `--client-threads N` (1),
//! `--postgres true|false` (true), `--postgres-url URL` (default `$RUCAT_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`; a scratch database is created on it and dropped).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use hyper::StatusCode;
use rucat::engine::{Engine, EngineId, EngineName, EngineState, EngineType};
use rucat::server::{self, ApiContext};
use rucat::shutdown;
use rucat::store::postgres::{PostgresStore, ScratchDatabase};
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Store, StoreOptions};
use rucat_bench::http_load::{load, Error, Round};
use rucat_bench::{flag, machine_line, median, postgres_admin_url, print_table};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// The servers, in the order of the table's columns (the last only with PostgreSQL).
const TARGETS: [&str; 4] = ["bare", "store", "rucat", "rucat-pg"];
const BARE: usize = 0;
const RUCAT: usize = 2;
const RUCAT_PG: usize = 3;

fn runtime(name: &str, threads: usize) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
}

fn seed_engine(i: usize) -> Engine {
    let now = Utc::now();
    Engine {
        id: EngineId::generate(),
        name: EngineName::parse(&format!("bench-{i:05}"))
            .unwrap_or_else(|_| unreachable!("bench-NNNNN is a valid engine name")),
        owner: rucat::auth::ANONYMOUS.to_owned(),
        engine_type: EngineType::Spark,
        version: "4.3.0".to_owned(),
        state: EngineState::Running,
        error: None,
        configs: BTreeMap::from([
            ("spark.executor.memory".to_owned(), "2g".to_owned()),
            ("spark.sql.shuffle.partitions".to_owned(), "8".to_owned()),
        ]),
        endpoint: Some(format!("sc://127.0.0.1:{}", 20000 + i % 40000)),
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

async fn bare_get(Path(_id): Path<String>, State(engine): State<Arc<Engine>>) -> Json<Engine> {
    Json(engine.as_ref().clone())
}

/// The bare handler, but reading the engine from the store as Rucat does (without Rucat's
/// router, error mapping and layers): tells the store's share from the router's.
async fn store_get(
    Path(id): Path<String>,
    State(store): State<Arc<dyn Store>>,
) -> Result<Json<Engine>, StatusCode> {
    let id = EngineId::parse(&id).ok_or(StatusCode::NOT_FOUND)?;
    match store.get(&id).await {
        Ok(Some(engine)) => Ok(Json(engine)),
        Ok(None) => Err(StatusCode::NOT_FOUND),
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn serve_on(listener: TcpListener, router: Router, shutdown: shutdown::Shutdown) {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.wait())
            .await
    });
}

/// Inserts `engines` seeded engines into `store`; returns the paths to GET.
async fn seed(store: &dyn Store, engines: usize) -> Result<Vec<String>, Error> {
    let mut paths = Vec::with_capacity(engines);
    for i in 0..engines.max(1) {
        let engine = seed_engine(i);
        store.insert(&engine).await?;
        paths.push(format!("/engines/{}", engine.id));
    }
    Ok(paths)
}

/// The servers, started on the current runtime: their addresses (in the order of [`TARGETS`];
/// "rucat-pg" only when a PostgreSQL scratch database is given) and the paths to GET on each.
struct Servers {
    addrs: Vec<SocketAddr>,
    paths: Vec<Arc<Vec<String>>>,
}

/// Starts the servers (on the current runtime).
async fn start_servers(
    dir: &std::path::Path,
    engines: usize,
    postgres: Option<&ScratchDatabase>,
    shutdown: shutdown::Shutdown,
) -> Result<Servers, Error> {
    let url = format!("sqlite://{}", dir.join("rucat.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
    let paths = Arc::new(seed(store.as_ref(), engines).await?);
    let first = EngineId::parse(paths[0].trim_start_matches("/engines/")).ok_or("bad id")?;
    let sample = store.get(&first).await?.ok_or("seeded engine missing")?;

    let bare_listener = TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare_listener.local_addr()?;
    let bare = Router::new()
        .route("/engines/{id}", get(bare_get))
        .with_state(Arc::new(sample));
    serve_on(bare_listener, bare, shutdown.clone());

    let store_listener = TcpListener::bind("127.0.0.1:0").await?;
    let store_addr = store_listener.local_addr()?;
    let store_only = Router::new()
        .route("/engines/{id}", get(store_get))
        .with_state(store.clone());
    serve_on(store_listener, store_only, shutdown.clone());

    let rucat_listener = TcpListener::bind("127.0.0.1:0").await?;
    let rucat_addr = rucat_listener.local_addr()?;
    let context = ApiContext::new(store, vec!["4.3.0".to_owned()]);
    tokio::spawn(server::serve(rucat_listener, context, shutdown.clone()));
    let mut servers = Servers {
        addrs: vec![bare_addr, store_addr, rucat_addr],
        paths: vec![paths.clone(), paths.clone(), paths],
    };

    if let Some(scratch) = postgres {
        let store: Arc<dyn Store> =
            Arc::new(PostgresStore::open(scratch.url(), &StoreOptions::default()).await?);
        let paths = Arc::new(seed(store.as_ref(), engines).await?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        servers.addrs.push(listener.local_addr()?);
        servers.paths.push(paths);
        let context = ApiContext::new(store, vec!["4.3.0".to_owned()]);
        tokio::spawn(server::serve(listener, context, shutdown));
    }
    Ok(servers)
}

fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let round_secs: f64 = flag("round-secs", 5.0);
    let warmup_secs: f64 = flag("warmup-secs", 2.0);
    let connections: usize = flag("connections", 32);
    let engines: usize = flag("engines", 1000);
    let server_threads: usize = flag("server-threads", 1);
    let client_threads: usize = flag("client-threads", 1);
    let with_postgres: bool = flag("postgres", true);

    let server_rt = runtime("server", server_threads)?;
    let client_rt = runtime("client", client_threads)?;
    let dir = tempfile::tempdir()?;
    let admin_url = postgres_admin_url();
    let scratch = if with_postgres {
        Some(
            server_rt
                .block_on(ScratchDatabase::create(&admin_url, "bench_get"))
                .map_err(|e| {
                    format!(
                        "cannot create a scratch database through {} (or pass --postgres false): {e}",
                        rucat::store::redact(&admin_url)
                    )
                })?,
        )
    } else {
        None
    };
    let (trigger, shutdown) = shutdown::channel();
    let servers = server_rt.block_on(start_servers(
        dir.path(),
        engines,
        scratch.as_ref(),
        shutdown,
    ))?;
    let targets = servers.addrs.len();

    let run = |target: usize, secs: f64| -> Result<Round, Error> {
        client_rt.block_on(load(
            servers.addrs[target],
            servers.paths[target].clone(),
            connections,
            Duration::from_secs_f64(secs),
            None,
        ))
    };

    for target in 0..targets {
        run(target, warmup_secs)?;
    }
    let mut table = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets];
    let mut sizes = vec![0.0; targets];
    let mut ratios = Vec::new();
    let mut pg_ratios = Vec::new();
    for r in 0..rounds {
        // The order rotates every round, so that no server always follows the same one.
        let mut rate = vec![0.0; targets];
        for k in 0..targets {
            let target = (r + k) % targets;
            let round = run(target, round_secs)?;
            rate[target] = round.rate();
            sizes[target] = round.bytes as f64 / round.requests.max(1) as f64;
            rates[target].push(round.rate());
        }
        let ratio = rate[RUCAT] / rate[BARE];
        ratios.push(ratio);
        let order: Vec<&str> = (0..targets).map(|k| TARGETS[(r + k) % targets]).collect();
        let mut row = vec![(r + 1).to_string(), order.join(", ")];
        row.extend(rate.iter().map(|v| format!("{v:.0}")));
        row.push(format!("{ratio:.2}"));
        if targets > RUCAT_PG {
            let pg_ratio = rate[RUCAT_PG] / rate[BARE];
            pg_ratios.push(pg_ratio);
            row.push(format!("{pg_ratio:.2}"));
        }
        table.push(row);
    }

    trigger.fire();
    drop(client_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    drop(scratch);

    let stores = if targets > RUCAT_PG {
        "SQLite (rucat-pg: PostgreSQL)"
    } else {
        "SQLite"
    };
    println!(
        "### get_throughput — {rounds} rounds of {round_secs} s per server, {connections} keep-alive connections, {engines} engines in {stores}; server runtime {server_threads} thread(s), client runtime {client_threads} thread(s); {}\n",
        machine_line()
    );
    let mut headers: Vec<String> = vec!["round".into(), "order".into()];
    headers.extend(TARGETS[..targets].iter().map(|t| format!("{t} req/s")));
    headers.push("rucat / bare".into());
    if targets > RUCAT_PG {
        headers.push("rucat-pg / bare".into());
    }
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&headers, &table);
    println!();

    let medians: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let mut median_row = vec!["median req/s".to_owned()];
    median_row.extend(medians.iter().map(|m| format!("{m:.0}")));
    median_row.push(format!("{:.2}", medians[RUCAT] / medians[BARE]));
    let mut per_round_row = vec!["median of per-round ratios".to_owned()];
    per_round_row.extend((0..targets).map(|_| String::new()));
    per_round_row.push(format!("{:.2}", median(&ratios)));
    let mut size_row = vec!["response body bytes".to_owned()];
    size_row.extend(sizes.iter().map(|s| format!("{s:.0}")));
    size_row.push(String::new());
    let mut headers: Vec<&str> = vec![""];
    headers.extend(&TARGETS[..targets]);
    headers.push("rucat / bare");
    if targets > RUCAT_PG {
        headers.push("rucat-pg / bare");
        median_row.push(format!("{:.2}", medians[RUCAT_PG] / medians[BARE]));
        per_round_row.push(format!("{:.2}", median(&pg_ratios)));
        size_row.push(String::new());
    }
    print_table(&headers, &[median_row, per_round_row, size_row]);
    Ok(())
}
