//! `get_throughput`: requests per second of `GET /engines/{id}` on the real Rucat router over a
//! real SQLite store holding `--engines` engines, against a bare axum handler that serializes the
//! same engine record from memory, on the same kind of route. A third server, "store", is the
//! bare handler reading the engine from the same store (`Store::get`) instead of memory, so that
//! the store's share of the gap shows apart from the router's. All servers run in one process,
//! on one server runtime; the load generator runs on its own runtime (its own threads), so that
//! every server faces the same client. Every round runs each server once; the order rotates.
//!
//! The load generator: `--connections` keep-alive HTTP/1.1 connections (hyper), one task each,
//! sending one request at a time for `--round-secs`; connection `c` cycles over the ids starting
//! at `c`.
//!
//! Flags: `--rounds N` (default 5), `--round-secs S` (5), `--warmup-secs S` (2),
//! `--connections N` (32), `--engines N` (1000), `--server-threads N` (1), `--client-threads N` (1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use hyper::StatusCode;
use rucat::engine::{Engine, EngineId, EngineState};
use rucat::server::{self, ApiContext};
use rucat::shutdown;
use rucat::store::sqlite::SqliteStore;
use rucat::store::Store;
use rucat_bench::http_load::{load, Error, Round};
use rucat_bench::{flag, machine_line, median, print_table};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// The servers, in the order of the table's columns.
const TARGETS: [&str; 3] = ["bare", "store", "rucat"];
const BARE: usize = 0;
const RUCAT: usize = 2;

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
        name: format!("bench-{i:05}"),
        owner: rucat::auth::ANONYMOUS.to_owned(),
        engine_type: "Spark".to_owned(),
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

/// Starts the servers (on the current runtime); returns their addresses (in the order of
/// [`TARGETS`]) and the paths to GET.
async fn start_servers(
    dir: &std::path::Path,
    engines: usize,
    shutdown: shutdown::Shutdown,
) -> Result<([SocketAddr; 3], Vec<String>), Error> {
    let url = format!("sqlite://{}", dir.join("rucat.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
    let mut paths = Vec::with_capacity(engines);
    for i in 0..engines.max(1) {
        let engine = seed_engine(i);
        store.insert(&engine).await?;
        paths.push(format!("/engines/{}", engine.id));
    }
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
    tokio::spawn(server::serve(rucat_listener, context, shutdown));
    Ok(([bare_addr, store_addr, rucat_addr], paths))
}

fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let round_secs: f64 = flag("round-secs", 5.0);
    let warmup_secs: f64 = flag("warmup-secs", 2.0);
    let connections: usize = flag("connections", 32);
    let engines: usize = flag("engines", 1000);
    let server_threads: usize = flag("server-threads", 1);
    let client_threads: usize = flag("client-threads", 1);

    let server_rt = runtime("server", server_threads)?;
    let client_rt = runtime("client", client_threads)?;
    let dir = tempfile::tempdir()?;
    let (trigger, shutdown) = shutdown::channel();
    let (addrs, paths) = server_rt.block_on(start_servers(dir.path(), engines, shutdown))?;
    let paths = Arc::new(paths);

    let run = |target: usize, secs: f64| -> Result<Round, Error> {
        client_rt.block_on(load(
            addrs[target],
            paths.clone(),
            connections,
            Duration::from_secs_f64(secs),
            None,
        ))
    };

    for target in 0..TARGETS.len() {
        run(target, warmup_secs)?;
    }
    let mut table = Vec::new();
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut sizes = [0.0; 3];
    let mut ratios = Vec::new();
    for r in 0..rounds {
        // The order rotates every round, so that no server always follows the same one.
        let mut rate = [0.0; 3];
        for k in 0..TARGETS.len() {
            let target = (r + k) % TARGETS.len();
            let round = run(target, round_secs)?;
            rate[target] = round.rate();
            sizes[target] = round.bytes as f64 / round.requests.max(1) as f64;
            rates[target].push(round.rate());
        }
        let ratio = rate[RUCAT] / rate[BARE];
        ratios.push(ratio);
        let order: Vec<&str> = (0..TARGETS.len())
            .map(|k| TARGETS[(r + k) % TARGETS.len()])
            .collect();
        let mut row = vec![(r + 1).to_string(), order.join(", ")];
        row.extend(rate.iter().map(|v| format!("{v:.0}")));
        row.push(format!("{ratio:.2}"));
        table.push(row);
    }

    trigger.fire();
    drop(client_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));

    println!(
        "### get_throughput — {rounds} rounds of {round_secs} s per server, {connections} keep-alive connections, {engines} engines in SQLite; server runtime {server_threads} thread(s), client runtime {client_threads} thread(s); {}\n",
        machine_line()
    );
    print_table(
        &[
            "round",
            "order",
            "bare req/s",
            "store req/s",
            "rucat req/s",
            "rucat / bare",
        ],
        &table,
    );
    println!();
    let medians: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let mut median_row = vec!["median req/s".to_owned()];
    median_row.extend(medians.iter().map(|m| format!("{m:.0}")));
    median_row.push(format!("{:.2}", medians[RUCAT] / medians[BARE]));
    let mut size_row = vec!["response body bytes".to_owned()];
    size_row.extend(sizes.iter().map(|s| format!("{s:.0}")));
    size_row.push(String::new());
    print_table(
        &["", "bare", "store", "rucat", "rucat / bare"],
        &[
            median_row,
            vec![
                "median of per-round rucat / bare".to_owned(),
                String::new(),
                String::new(),
                String::new(),
                format!("{:.2}", median(&ratios)),
            ],
            size_row,
        ],
    );
    Ok(())
}
