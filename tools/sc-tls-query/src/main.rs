//! `sc-tls-query URL`: connects to a Spark Connect server over TLS with spark-connect-rs (its
//! `tls` feature: every endpoint is https), runs `SELECT 1 AS one` and `range(1_000_000).count()`,
//! and prints one JSON line: `{"one":1,"count":1000000}`, or `{"error":"…","code":"Unavailable"}`
//! (code: the gRPC status code, when the error came from one) and exits 1.
//!
//! Trusted roots (rustls-native-certs 0.7): the certificates in `SSL_CERT_FILE` (PEM) plus those
//! in `SSL_CERT_DIR` when either is set, the platform's store otherwise. For a test CA, run with
//! `SSL_CERT_FILE=ca.pem` and without `SSL_CERT_DIR`.

use std::process::ExitCode;

use arrow::array::{Array, Int32Array};
use serde_json::json;
use spark_connect_rs::client::ChannelBuilder;
use spark_connect_rs::errors::SparkError;
use spark_connect_rs::SparkSessionBuilder;

struct Failure {
    message: String,
    code: Option<&'static str>,
}

impl From<SparkError> for Failure {
    fn from(error: SparkError) -> Self {
        Failure {
            code: status_code(&error),
            message: error.to_string(),
        }
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: None,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // spark-connect-rs panics on some inputs (an invalid `session_id`, a non-Int64 count): keep
    // the one-JSON-line contract even then.
    std::panic::set_hook(Box::new(|info| {
        println!("{}", json!({ "error": format!("panic: {info}") }));
        std::process::exit(1);
    }));
    let mut args = std::env::args().skip(1);
    let (Some(url), None) = (args.next(), args.next()) else {
        println!(
            "{}",
            json!({ "error": "usage: sc-tls-query sc://HOST:PORT[/;key=value…]" })
        );
        return ExitCode::FAILURE;
    };
    match query(&url).await {
        Ok((one, count)) => {
            println!("{}", json!({ "one": one, "count": count }));
            ExitCode::SUCCESS
        }
        Err(Failure { message, code }) => {
            let line = match code {
                Some(code) => json!({ "error": message, "code": code }),
                None => json!({ "error": message }),
            };
            println!("{line}");
            ExitCode::FAILURE
        }
    }
}

async fn query(url: &str) -> Result<(i32, i64), Failure> {
    // `remote` unwraps this same parse: check first, so a bad URL is an error, not a panic.
    ChannelBuilder::create(url)?;
    let spark = match SparkSessionBuilder::remote(url).build().await {
        Ok(spark) => spark,
        Err(error) => return Err(explain_connect_error(url, error).await),
    };
    let batch = spark.sql("SELECT 1 AS one").await?.collect().await?;
    let one = match batch.num_columns() {
        0 => None,
        _ => batch.column(0).as_any().downcast_ref::<Int32Array>(),
    };
    let one = match one {
        Some(column) if column.len() == 1 && column.is_valid(0) => column.value(0),
        _ => return Err(fail(format!("SELECT 1 AS one returned {batch:?}"))),
    };
    let count = spark.range(None, 1_000_000, 1, None).count().await?;
    Ok((one, count))
}

/// spark-connect-rs turns a failed connect into `InvalidConnectionUrl("transport error")`,
/// dropping the cause (certificate, ALPN, refused…). Connect once more the way it does
/// (`Channel::from_shared("https://HOST:PORT").connect()`) and report the whole cause chain.
async fn explain_connect_error(url: &str, error: SparkError) -> Failure {
    let authority = url
        .strip_prefix("sc://")
        .and_then(|rest| rest.split('/').next());
    let (SparkError::InvalidConnectionUrl(_), Some(authority)) = (&error, authority) else {
        return error.into();
    };
    let endpoint = format!("https://{authority}");
    let cause = match tonic::transport::Endpoint::from_shared(endpoint.clone()) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(_) => return error.into(), // it worked this time: nothing more to say
            Err(cause) => cause,
        },
        Err(cause) => cause,
    };
    let mut chain = vec![cause.to_string()];
    let mut source = std::error::Error::source(&cause);
    while let Some(next) = source {
        // hyper's messages already end with their cause's: skip the repeats.
        let next_message = next.to_string();
        if !chain.iter().any(|message| message.ends_with(&next_message)) {
            chain.push(next_message);
        }
        source = next.source();
    }
    fail(format!("connect to {endpoint}: {}", chain.join(": ")))
}

/// The gRPC status code a `SparkError` was made from (see `From<tonic::Status>` in
/// spark-connect-rs: `AnalysisException` is Internal, AlreadyExists or Ok, so it gets none).
fn status_code(error: &SparkError) -> Option<&'static str> {
    Some(match error {
        SparkError::Aborted(_) => "Aborted",
        SparkError::Cancelled(_) => "Cancelled",
        SparkError::DataLoss(_) => "DataLoss",
        SparkError::DeadlineExceeded(_) => "DeadlineExceeded",
        SparkError::FailedPrecondition(_) => "FailedPrecondition",
        SparkError::InvalidArgument(_) => "InvalidArgument",
        SparkError::NotFound(_) => "NotFound",
        SparkError::OutOfRange(_) => "OutOfRange",
        SparkError::PermissionDenied(_) => "PermissionDenied",
        SparkError::ResourceExhausted(_) => "ResourceExhausted",
        SparkError::Unauthenticated(_) => "Unauthenticated",
        SparkError::Unavailable(_) => "Unavailable",
        SparkError::Unimplemented(_) => "Unimplemented",
        SparkError::Unknown(_) => "Unknown",
        _ => return None,
    })
}
