//! `auth_overhead`: requests per second of `GET /engines/{id}` on the real Rucat router over one
//! real SQLite store, with authentication off, with an API token (among `--tokens` configured
//! ones), and with OIDC JWTs signed RS256 and ES256 (keys from a JWKS file), side by side. The
//! caller is a plain user who owns the engines, so the ownership check runs too. All servers run
//! in one process on one server runtime; the load generator runs on its own runtime. Every round
//! runs each server once; the order rotates.
//!
//! Then, apart from HTTP: the cost of one JWT check when the signature must be verified (a
//! token not seen before) and when the token was verified before (remembered by its digest).
//!
//! Flags: `--rounds N` (default 5), `--round-secs S` (5), `--warmup-secs S` (2),
//! `--connections N` (32), `--engines N` (1000), `--tokens N` (1000), `--server-threads N` (1),
//! `--client-threads N` (1), `--verifications N` (2000).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rucat::auth::jwt::{JwksSource, JwtConfig, JwtVerifier};
use rucat::auth::token::{self, TokenEntry, TokenHash};
use rucat::auth::{AuthConfig, Authenticator, Role};
use rucat::engine::{Engine, EngineId, EngineName, EngineState, EngineType};
use rucat::server::{self, ApiContext};
use rucat::shutdown;
use rucat::store::sqlite::SqliteStore;
use rucat::store::Store;
use rucat_bench::http_load::{load, Error};
use rucat_bench::{flag, machine_line, median, percentile, print_table};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const USER: &str = "alice";
const ISSUER: &str = "https://idp.bench";
const AUDIENCE: &str = "rucat";

/// The servers, in the order of the table's columns.
const TARGETS: [&str; 4] = ["none", "token", "jwt-rs256", "jwt-es256"];

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
        owner: USER.to_owned(),
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

/// An issuer's two keys: their JWKS, and a JWT for `sub` signed by each.
struct Issuer {
    jwks: String,
    rsa: (EncodingKey, String),
    ec: (EncodingKey, String),
}

impl Issuer {
    fn new() -> Result<Self, Error> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let der = private.to_pkcs1_der()?;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "EC key generation failed")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "EC key does not read back")?;
        let point = pair.public_key().as_ref();
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "r", "alg": "RS256", "use": "sig",
             "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be())},
            {"kty": "EC", "kid": "e", "crv": "P-256", "alg": "ES256", "use": "sig",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        ]});
        Ok(Issuer {
            jwks: jwks.to_string(),
            rsa: (EncodingKey::from_rsa_der(der.as_bytes()), "r".into()),
            ec: (EncodingKey::from_ec_der(pkcs8.as_ref()), "e".into()),
        })
    }

    /// A JWT for `sub`, valid for an hour, `n` making it unique.
    fn sign(&self, algorithm: Algorithm, sub: &str, n: u64) -> Result<String, Error> {
        let (key, kid) = match algorithm {
            Algorithm::RS256 => &self.rsa,
            _ => &self.ec,
        };
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.clone());
        let now = Utc::now().timestamp();
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now,
                            "exp": now + 3600, "jti": n});
        Ok(jsonwebtoken::encode(&header, &claims, key)?)
    }
}

fn jwt_config(jwks: &std::path::Path) -> JwtConfig {
    JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(jwks.to_owned()),
        refresh_interval: Duration::from_secs(600),
        user_claim: "sub".into(),
        admin: None,
        leeway_secs: 60,
    }
}

/// Starts the servers (on the current runtime); returns their addresses (in the order of
/// [`TARGETS`]), the Authorization header each client sends, and the paths to GET.
async fn start_servers(
    dir: &std::path::Path,
    engines: usize,
    tokens: usize,
    issuer: &Issuer,
    shutdown: shutdown::Shutdown,
) -> Result<(Vec<SocketAddr>, Vec<Option<Arc<str>>>, Vec<String>), Error> {
    let url = format!("sqlite://{}", dir.join("rucat.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
    let mut paths = Vec::with_capacity(engines);
    for i in 0..engines.max(1) {
        let engine = seed_engine(i);
        store.insert(&engine).await?;
        paths.push(format!("/engines/{}", engine.id));
    }

    // `tokens` configured tokens of as many users; the client has the last one.
    let mut entries = Vec::with_capacity(tokens);
    for i in 0..tokens.max(1) - 1 {
        entries.push(TokenEntry {
            user: format!("user-{i}"),
            role: Role::User,
            hash: TokenHash::of(&format!("rucat_other-{i}")),
        });
    }
    let (secret, hash) = token::generate()?;
    entries.push(TokenEntry {
        user: USER.into(),
        role: Role::User,
        hash,
    });
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, &issuer.jwks)?;
    let configs = [
        AuthConfig::default(),
        AuthConfig {
            tokens: entries,
            ..AuthConfig::default()
        },
        AuthConfig {
            jwt: Some(jwt_config(&jwks)),
            ..AuthConfig::default()
        },
        AuthConfig {
            jwt: Some(jwt_config(&jwks)),
            ..AuthConfig::default()
        },
    ];
    let headers = vec![
        None,
        Some(format!("Bearer {}", secret.expose_secret()).into()),
        Some(format!("Bearer {}", issuer.sign(Algorithm::RS256, USER, 0)?).into()),
        Some(format!("Bearer {}", issuer.sign(Algorithm::ES256, USER, 0)?).into()),
    ];
    let mut addrs = Vec::new();
    for config in configs {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let context = ApiContext {
            auth: Arc::new(Authenticator::new(&config).await?),
            ..ApiContext::new(store.clone(), vec!["4.3.0".to_owned()])
        };
        tokio::spawn(server::serve(listener, context, shutdown.clone()));
    }
    Ok((addrs, headers, paths))
}

/// Microseconds per JWT check of `count` distinct tokens: first seen (signature verified),
/// then again (remembered).
async fn verification_cost(
    issuer: &Issuer,
    dir: &std::path::Path,
    algorithm: Algorithm,
    count: usize,
) -> Result<(f64, f64), Error> {
    let verifier = JwtVerifier::new(jwt_config(&dir.join("jwks.json")))?;
    verifier.refresh().await?;
    let tokens: Vec<String> = (0..count as u64)
        .map(|n| issuer.sign(algorithm, USER, n + 1))
        .collect::<Result<_, _>>()?;
    let mut passes = [0.0; 2];
    for pass in &mut passes {
        let started = Instant::now();
        for token in &tokens {
            verifier.verify(token).await.map_err(|e| e.to_string())?;
        }
        *pass = started.elapsed().as_secs_f64() * 1e6 / count as f64;
    }
    Ok((passes[0], passes[1]))
}

fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let round_secs: f64 = flag("round-secs", 5.0);
    let warmup_secs: f64 = flag("warmup-secs", 2.0);
    let connections: usize = flag("connections", 32);
    let engines: usize = flag("engines", 1000);
    let tokens: usize = flag("tokens", 1000);
    let server_threads: usize = flag("server-threads", 1);
    let client_threads: usize = flag("client-threads", 1);
    let verifications: usize = flag("verifications", 2000);

    let issuer = Issuer::new()?;
    let server_rt = runtime("server", server_threads)?;
    let client_rt = runtime("client", client_threads)?;
    let dir = tempfile::tempdir()?;
    let (trigger, shutdown) = shutdown::channel();
    let (addrs, headers, paths) = server_rt.block_on(start_servers(
        dir.path(),
        engines,
        tokens,
        &issuer,
        shutdown,
    ))?;
    let paths = Arc::new(paths);

    let run = |target: usize, secs: f64| -> Result<f64, Error> {
        let round = client_rt.block_on(load(
            addrs[target],
            paths.clone(),
            connections,
            Duration::from_secs_f64(secs),
            headers[target].clone(),
        ))?;
        Ok(round.rate())
    };

    for target in 0..TARGETS.len() {
        run(target, warmup_secs)?;
    }
    let mut table = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); TARGETS.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); TARGETS.len()];
    for r in 0..rounds {
        let mut rate = vec![0.0; TARGETS.len()];
        for k in 0..TARGETS.len() {
            let target = (r + k) % TARGETS.len();
            rate[target] = run(target, round_secs)?;
            rates[target].push(rate[target]);
        }
        let order: Vec<&str> = (0..TARGETS.len())
            .map(|k| TARGETS[(r + k) % TARGETS.len()])
            .collect();
        let mut row = vec![(r + 1).to_string(), order.join(", ")];
        row.extend(rate.iter().map(|v| format!("{v:.0}")));
        for (t, ratio) in ratios.iter_mut().enumerate() {
            ratio.push(rate[t] / rate[0]);
        }
        row.extend((1..TARGETS.len()).map(|t| format!("{:.3}", rate[t] / rate[0])));
        table.push(row);
    }
    trigger.fire();
    drop(client_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));

    let verify_rt = runtime("verify", 1)?;
    let rs = verify_rt.block_on(verification_cost(
        &issuer,
        dir.path(),
        Algorithm::RS256,
        verifications,
    ))?;
    let es = verify_rt.block_on(verification_cost(
        &issuer,
        dir.path(),
        Algorithm::ES256,
        verifications,
    ))?;

    println!(
        "### auth_overhead — {rounds} rounds of {round_secs} s per server, {connections} keep-alive connections, {engines} engines in SQLite owned by the caller, {tokens} configured API tokens; server runtime {server_threads} thread(s), client runtime {client_threads} thread(s); {}\n",
        machine_line()
    );
    print_table(
        &[
            "round",
            "order",
            "none req/s",
            "token req/s",
            "jwt-rs256 req/s",
            "jwt-es256 req/s",
            "token / none",
            "rs256 / none",
            "es256 / none",
        ],
        &table,
    );
    println!();
    let medians: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let mut rows = vec![{
        let mut row = vec!["median req/s".to_owned()];
        row.extend(medians.iter().map(|m| format!("{m:.0}")));
        row
    }];
    let mut ratio_row = vec![
        "median of per-round ratio to none".to_owned(),
        "1".to_owned(),
    ];
    ratio_row.extend(ratios.iter().skip(1).map(|r| format!("{:.3}", median(r))));
    rows.push(ratio_row);
    let mut worst_row = vec!["lowest per-round ratio".to_owned(), "1".to_owned()];
    worst_row.extend(
        ratios
            .iter()
            .skip(1)
            .map(|r| format!("{:.3}", percentile(r, 0.0))),
    );
    rows.push(worst_row);
    print_table(&["", "none", "token", "jwt-rs256", "jwt-es256"], &rows);
    println!();
    print_table(
        &[
            "one JWT check (µs)",
            "new token: signature verified",
            "seen token: remembered",
        ],
        &[
            vec![
                "RS256 (2048-bit RSA)".to_owned(),
                format!("{:.1}", rs.0),
                format!("{:.2}", rs.1),
            ],
            vec![
                "ES256 (P-256)".to_owned(),
                format!("{:.1}", es.0),
                format!("{:.2}", es.1),
            ],
        ],
    );
    Ok(())
}
