//! What the benchmarks share: flags, statistics, markdown output, free ports.
//!
//! Benchmarks talk only to 127.0.0.1, bound every loop in count and time, and assert nothing on
//! timings: they print what they measured.

pub mod http_load;
pub mod process;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::str::FromStr;
use std::time::Duration;

/// The value of `--name VALUE` or `--name=VALUE` on the command line, else `default`.
/// Exits with a message when the value does not parse.
pub fn flag<T: FromStr>(name: &str, default: T) -> T {
    match flag_str(name) {
        None => default,
        Some(value) => value.parse().unwrap_or_else(|_| {
            eprintln!("invalid value {value:?} for --{name}");
            std::process::exit(2)
        }),
    }
}

/// The raw value of `--name VALUE` or `--name=VALUE`, if given.
pub fn flag_str(name: &str) -> Option<String> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix(&with_eq) {
            return Some(value.to_owned());
        }
        if *arg == long {
            return args.get(i + 1).cloned();
        }
    }
    None
}

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile `p` (0–100) of `values`; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (the mean of the two middle values for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Prints a markdown table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    println!("|{}", headers.iter().map(|_| " --- |").collect::<String>());
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// A one-line description of when and where a benchmark ran.
pub fn machine_line() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{} UTC, {cores} cores",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    )
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// What `POST /engines` answered, with when it was sent and answered.
pub struct Posted {
    pub id: String,
    pub sent: std::time::Instant,
    pub answered: std::time::Instant,
}

/// Asks the Rucat server at `base` for a Spark engine named `bench`; anything but 201 with an
/// id is an error naming what came back.
pub async fn post_engine(
    http: &reqwest::Client,
    base: &str,
    version: &str,
) -> Result<Posted, Box<dyn std::error::Error + Send + Sync>> {
    let body = serde_json::json!({"name": "bench", "engine_type": "Spark", "version": version});
    let sent = std::time::Instant::now();
    let response = http
        .post(format!("{base}/engines"))
        .json(&body)
        .send()
        .await?;
    let answered = std::time::Instant::now();
    let status = response.status();
    if status != reqwest::StatusCode::CREATED {
        return Err(format!(
            "POST /engines answered {status}: {}",
            response.text().await?
        )
        .into());
    }
    let created: serde_json::Value = response.json().await?;
    let id = created["id"]
        .as_str()
        .ok_or("POST /engines answered no id")?
        .to_owned();
    Ok(Posted { id, sent, answered })
}

/// The PostgreSQL server the store benchmarks use, as an admin URL (scratch databases are created
/// through it): `--postgres-url`, else `RUCAT_TEST_POSTGRES_URL`, else the local server the tests
/// use.
pub fn postgres_admin_url() -> String {
    flag_str("postgres-url")
        .or_else(|| std::env::var("RUCAT_TEST_POSTGRES_URL").ok())
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A small deterministic pseudo-random generator (xorshift64*), so that runs are repeatable
/// without another dependency. Not for anything but spreading benchmark timings.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The `rucat` binary the process benchmarks run: `--rucat PATH`, else the one built beside this
/// benchmark (`target/release/rucat`).
pub fn rucat_binary() -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let binary = match flag_str("rucat") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no directory for this binary")?
            .join("rucat"),
    };
    if !binary.is_file() {
        return Err(format!(
            "no rucat binary at {} (cargo build --release -p rucat --bin rucat, or pass --rucat)",
            binary.display()
        )
        .into());
    }
    Ok(binary)
}
