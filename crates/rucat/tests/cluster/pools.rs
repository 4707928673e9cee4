//! Warm pools under races: four servers take warm engines while four monitors refill the pool,
//! all on one PostgreSQL store with the simulated platform.
//!
//! What must hold: each warm engine is given to exactly one create (and keeps that create's
//! owner and name), a take only ever gets an engine a monitor inserted as warm, the pool never
//! holds more than its size of engines (sampled from PostgreSQL every few ms through the whole
//! test), no warm engine's resource is made twice, and the pool is back at its size at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rucat::auth::token::{self, TokenEntry};
use rucat::auth::Role;
use rucat::platform::simulated::{JournalEvent, SimulatedPlatform};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::harness::Cluster;
use crate::{audit_events, check_journal, no_error_path, open_store, Rng, VERSION};

const POOL: &str = "p";
const SIZE: i64 = 3;
const SERVERS: usize = 4;
const MONITORS: usize = 4;
/// Distinct users the creates are spread over.
const USERS: usize = 6;
const WAVES: usize = 8;
const PER_WAVE: usize = 6;
/// How long anything may take on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// The states in which an engine counts toward its pool's size (the store's `WARM_STATES`).
const WARM_COUNT: &str = "SELECT count(*) FROM engines WHERE pool = $1 \
     AND state IN ('WaitToStart', 'TriggerStart', 'StartInProgress', 'Running')";
const WARM_RUNNING: &str = "SELECT count(*) FROM engines WHERE pool = $1 AND state = 'Running'";

fn config(tokens: &str) -> String {
    format!(
        r#"
[monitor]
poll_interval_ms = 1000
trigger_timeout_ms = 20000
start_check_interval_ms = 100
health_check_interval_ms = 2000
orphan_scan_interval_ms = 1500

[simulated]
start_delay_ms = 150

[[pool]]
name = "{POOL}"
version = "{VERSION}"
size = {SIZE}

[auth]
{tokens}
"#
    )
}

/// A new token for `user`: the secret to present, and its configuration entry.
fn new_token(user: &str, role: Role) -> (String, String) {
    let (secret, hash) = token::generate().expect("random");
    let entry = TokenEntry {
        user: user.to_owned(),
        role,
        hash,
    };
    (
        secret.expose_secret().to_owned(),
        token::entry_toml(&entry, "auth.tokens"),
    )
}

async fn count(pg: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(POOL)
        .fetch_one(pg)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until the pool holds exactly its size of engines, all of them Running.
async fn wait_pool_full(cluster: &Cluster, pg: &sqlx::PgPool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let warm = count(pg, WARM_COUNT).await;
        let running = count(pg, WARM_RUNNING).await;
        if warm == SIZE && running == SIZE {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the pool holds {warm} engines, {running} Running, after {PATIENCE:?}{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An audited event: engine, message, actor, to state, from state.
type Audited = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

/// One create as a user sent it, and what came back.
#[derive(Debug, Clone)]
struct Sent {
    user: String,
    name: String,
    server: usize,
    status: u16,
    id: Option<String>,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_servers_and_monitors_take_and_refill_a_pool_at_once_without_sharing_or_overfilling() {
    let db = crate::common::scratch_postgres("pools").await;
    // The schema first (the store's migrations), then the audit of every event on it: a take
    // deletes the warm engine's history, the audit keeps it.
    open_store(db.url()).await.close().await;
    let audit = audit_events(db.url()).await;

    let (admin, admin_entry) = new_token("root", Role::Admin);
    let mut entries = admin_entry;
    let mut users = Vec::new();
    for n in 0..USERS {
        let user = format!("u{n}");
        let (secret, entry) = new_token(&user, Role::User);
        entries.push_str(&entry);
        users.push((user, secret));
    }
    let mut cluster = Cluster::new(db.url(), "simulated", &config(&entries));
    // The harness's own calls (states, events, listings) are the admin's.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {admin}").parse().expect("a header value"),
    );
    cluster.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .expect("http client");
    for _ in 0..SERVERS {
        cluster.add_server().await;
    }
    for _ in 0..MONITORS {
        cluster.add_monitor("");
    }
    let cluster = Arc::new(cluster);
    let (mut rng, seed) = Rng::seeded();
    eprintln!("RUCAT_TEST_SEED={seed}");

    // The sampler: the pool's count, as PostgreSQL has it, every 5 ms from before the first
    // engine is warm to the end.
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await
        .expect("connect");
    let sampling = Arc::new(AtomicBool::new(true));
    let max_warm = Arc::new(AtomicI64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pg, sampling, max_warm, samples) = (
            pg.clone(),
            Arc::clone(&sampling),
            Arc::clone(&max_warm),
            Arc::clone(&samples),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                // An error ends the sampling and fails the test where it awaits the sampler.
                let warm: i64 = sqlx::query_scalar(WARM_COUNT)
                    .bind(POOL)
                    .fetch_one(&pg)
                    .await
                    .map_err(|e| format!("sampling the pool's count: {e}"))?;
                max_warm.fetch_max(warm, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<(), String>(())
        })
    };

    wait_pool_full(&cluster, &pg, "before the first create").await;

    // Waves of creates, each from concurrent tasks over every server. Even waves find the pool
    // full; odd waves come a short random pause after the previous one, while the monitors
    // refill what it took.
    let mut sent: Vec<Sent> = Vec::new();
    for wave in 0..WAVES {
        if wave % 2 == 0 {
            wait_pool_full(&cluster, &pg, &format!("before wave {wave}")).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        }
        let mut tasks = Vec::new();
        for k in 0..PER_WAVE {
            let n = wave * PER_WAVE + k;
            let (user, secret) = users[n % USERS].clone();
            let server = n % SERVERS;
            let name = format!("c{n}");
            let cluster = Arc::clone(&cluster);
            tasks.push(tokio::spawn(async move {
                let response = cluster
                    .http
                    .post(cluster.url(server, "/engines"))
                    .bearer_auth(&secret)
                    .json(&serde_json::json!({
                        "name": name, "engine_type": "Spark", "version": VERSION
                    }))
                    .send()
                    .await
                    .expect("POST /engines");
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let id = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned));
                Sent {
                    user,
                    name,
                    server,
                    status,
                    id,
                    body,
                }
            }));
        }
        for task in tasks {
            sent.push(task.await.expect("create task"));
        }
    }

    // Every create was answered 201 with an id of its own.
    for create in &sent {
        assert_eq!(
            create.status, 201,
            "create {} on server {}: {}",
            create.name, create.server, create.body
        );
        assert!(create.id.is_some(), "{create:?}");
    }
    let ids: Vec<String> = sent.iter().filter_map(|c| c.id.clone()).collect();
    let mut holders: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for create in &sent {
        let id = create.id.as_deref().expect("an id");
        holders
            .entry(id)
            .or_default()
            .push((create.user.as_str(), create.name.as_str()));
    }
    let shared: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "one engine id given to several creates (id, [(user, name)]): {shared:?}"
    );

    // Every engine runs, and the pool is back at its size, and stays there.
    let expected: Vec<(String, Option<&str>)> =
        ids.iter().map(|id| (id.clone(), Some("Running"))).collect();
    cluster.settle(&expected, PATIENCE).await;
    wait_pool_full(&cluster, &pg, "after the last wave").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_pool_full(&cluster, &pg, "3 s after the last wave").await;
    sampling.store(false, Ordering::SeqCst);
    sampler
        .await
        .expect("sampler task")
        .unwrap_or_else(|e| panic!("{e}"));
    let max = max_warm.load(Ordering::SeqCst);
    assert!(
        max <= SIZE,
        "the pool held {max} engines at once ({} samples)",
        samples.load(Ordering::SeqCst)
    );

    // Which creates took a warm engine, as each engine's history says: its first event.
    let mut taken_by: HashMap<String, &Sent> = HashMap::new();
    for create in &sent {
        let id = create.id.as_deref().expect("an id");
        let events = cluster.events(id).await;
        let first = events.first().unwrap_or_else(|| panic!("{id}: no events"));
        let message = first["message"].as_str().unwrap_or_default();
        if message.starts_with(&format!("taken from warm pool {POOL} ")) {
            assert_eq!(first["to"], "Running", "{id}: {first}");
            assert!(first.get("from").is_none(), "{id}: {first}");
            assert_eq!(first["actor"]["kind"], "user", "{id}: {first}");
            assert_eq!(
                first["actor"]["name"],
                create.user.as_str(),
                "{id}: {first}"
            );
            taken_by.insert(id.to_owned(), create);
        }
        // Each engine is the create's: its owner and name, out of the pool.
        let engine = cluster.engine(create.server, id).await;
        assert_eq!(engine["owner"], create.user.as_str(), "{id}: {engine}");
        assert_eq!(engine["name"], create.name.as_str(), "{id}: {engine}");
        assert!(
            engine.get("pool").is_none_or(Value::is_null),
            "{id}: {engine}"
        );
    }

    // The store's rows agree.
    let rows: Vec<(String, String, String, Option<String>, String)> =
        sqlx::query_as("SELECT id, owner, name, pool, state FROM engines WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pg)
            .await
            .expect("rows");
    assert_eq!(rows.len(), ids.len());
    let by_id: HashMap<&str, &Sent> = sent
        .iter()
        .map(|c| (c.id.as_deref().expect("an id"), c))
        .collect();
    for (id, owner, name, pool, state) in &rows {
        let create = by_id[id.as_str()];
        assert_eq!(
            (owner.as_str(), name.as_str(), pool, state.as_str()),
            (create.user.as_str(), create.name.as_str(), &None, "Running"),
            "{id}"
        );
    }

    // The audit: the warm engines the monitors inserted, and the takes.
    let audited: Vec<Audited> = sqlx::query_as(
        "SELECT engine, message, actor, to_state, from_state FROM test_audit ORDER BY seq",
    )
    .fetch_all(&audit)
    .await
    .expect("audit");
    let mut inserted: Vec<String> = Vec::new();
    let mut inserted_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut takes: HashMap<String, Vec<Option<String>>> = HashMap::new();
    let mut shrinks = Vec::new();
    for (engine, message, actor, to, from) in &audited {
        let message = message.as_deref().unwrap_or_default();
        if message == format!("warm engine for pool {POOL}") {
            assert!(
                from.is_none(),
                "a warm insert is an engine's first event: {engine}"
            );
            assert!(
                actor.as_deref().is_some_and(|a| a.starts_with("monitor:")),
                "warm engine {engine} inserted by {actor:?}"
            );
            inserted.push(engine.clone());
            *inserted_by
                .entry(actor.clone().unwrap_or_default())
                .or_default() += 1;
        }
        if message.starts_with(&format!("taken from warm pool {POOL} ")) {
            assert_eq!(to, "Running");
            takes.entry(engine.clone()).or_default().push(actor.clone());
        }
        if message.starts_with(&format!("pool {POOL} ")) {
            shrinks.push((engine.clone(), message.to_owned(), to.clone()));
        }
    }
    let inserted_set: HashSet<&String> = inserted.iter().collect();
    assert_eq!(
        inserted_set.len(),
        inserted.len(),
        "a warm engine inserted twice"
    );
    // Each warm engine was taken at most once, by the create that has it.
    for (engine, actors) in &takes {
        assert_eq!(actors.len(), 1, "warm engine {engine} was taken {actors:?}");
        assert!(
            inserted_set.contains(engine),
            "{engine} was taken but never inserted as warm"
        );
        let create = taken_by
            .get(engine)
            .unwrap_or_else(|| panic!("{engine} was taken, but by none of the creates"));
        assert_eq!(
            actors[0].as_deref(),
            Some(format!("user:{}", create.user).as_str())
        );
    }
    let took: HashSet<&String> = takes.keys().collect();
    let said: HashSet<&String> = taken_by.keys().collect();
    assert_eq!(
        took, said,
        "the takes in the store and in the engines' histories"
    );
    // No warm engine was stopped as beyond the pool's size, or ended in an error.
    assert!(shrinks.is_empty(), "the pool was overfilled: {shrinks:?}");
    no_error_path(&cluster, &audit).await;

    // Now in the pool: exactly the warm engines inserted and not taken.
    let in_pool: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT id, owner, name, state FROM engines WHERE pool = $1")
            .bind(POOL)
            .fetch_all(&pg)
            .await
            .expect("pool rows");
    let in_pool_ids: HashSet<&String> = in_pool.iter().map(|(id, ..)| id).collect();
    for (id, owner, name, state) in &in_pool {
        assert_eq!(
            (owner.as_str(), name.as_str(), state.as_str()),
            ("", format!("warm-{POOL}").as_str(), "Running"),
            "{id}"
        );
        assert!(!took.contains(id), "{id} is taken and still in the pool");
    }
    let accounted: HashSet<&String> = took.union(&in_pool_ids).copied().collect();
    assert_eq!(
        accounted, inserted_set,
        "every warm engine inserted is either taken or still in the pool"
    );
    let takes_n = took.len();
    assert!(
        takes_n as i64 <= inserted.len() as i64,
        "{takes_n} takes of {} warm engines",
        inserted.len()
    );
    assert_eq!(inserted.len(), takes_n + SIZE as usize);
    assert!(
        takes_n >= SIZE as usize * WAVES.div_ceil(2),
        "each wave that found the pool full took all of it: {takes_n} takes"
    );

    // The platform: one resource per engine, made once (no warm engine started by two
    // monitors), and a resource for every Running engine and no other.
    let running = cluster.ids_in_state("Running").await;
    let (creates, adopts) = check_journal(&cluster, &running);
    assert_eq!(adopts, 0);
    let journal = SimulatedPlatform::journal(&cluster.data_dir()).expect("journal");
    let mut made: HashMap<&str, Vec<u32>> = HashMap::new();
    for entry in &journal {
        if entry.event == JournalEvent::Create {
            made.entry(entry.engine.as_str())
                .or_default()
                .push(entry.pid);
        }
    }
    for engine in &inserted {
        let pids = made.get(engine.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            pids.len(),
            1,
            "warm engine {engine}'s resource was made by {pids:?}"
        );
    }
    let warm_pids: HashSet<u32> = inserted
        .iter()
        .filter_map(|engine| made.get(engine.as_str()).and_then(|pids| pids.first()))
        .copied()
        .collect();
    eprintln!(
        "{} creates on {SERVERS} servers: {takes_n} took a warm engine, {} started cold; \
         {} warm engines inserted ({} refills after the first {SIZE}) by {} monitor(s) \
         {inserted_by:?}, their resources made by {} monitor process(es); \
         max sampled pool count {max} over {} samples; {creates} resources made",
        sent.len(),
        sent.len() - takes_n,
        inserted.len(),
        inserted.len() - SIZE as usize,
        inserted_by.len(),
        warm_pids.len(),
        samples.load(Ordering::SeqCst),
    );
}
