//! Creates an engine, waits until it runs, runs a query on it through Rucat's Spark Connect
//! proxy, then stops and deletes it.
//!
//! ```sh
//! rucat serve &                         # or any Rucat server
//! RUCAT_SERVER=http://127.0.0.1:3000 RUCAT_TOKEN=… \
//!   cargo run -p rucat-client --example query -- [SPARK_VERSION]
//! ```
//!
//! RUCAT_SERVER defaults to http://127.0.0.1:3000; RUCAT_TOKEN is only needed when the server
//! authenticates its users. The Spark version defaults to 4.3.0.

use std::time::Duration;

use rucat_client::arrow::util::pretty::pretty_format_batches;
use rucat_client::{Client, CreateRequest, EngineState};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let version = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "4.3.0".to_owned());
    let client = Client::from_env();

    let engine = client
        .create_engine(&CreateRequest::new("rust-client-example", version))
        .await?;
    println!("created engine {}", engine.id());
    let running = engine
        .wait_with(EngineState::Running, Duration::from_secs(600), |e| {
            println!("  {}", e.state)
        })
        .await?;
    println!("running at {}", running.endpoint.unwrap_or_default());

    let spark = engine.session().await?;
    let batch = spark
        .sql("SELECT id, id * id AS square FROM range(5)")
        .await?
        .collect()
        .await?;
    println!("{} rows:", batch.num_rows());
    println!("{}", pretty_format_batches(&[batch])?);

    engine.stop().await?;
    engine
        .wait(EngineState::Terminated, Duration::from_secs(600))
        .await?;
    engine.delete().await?;
    println!("deleted engine {}", engine.id());
    Ok(())
}
