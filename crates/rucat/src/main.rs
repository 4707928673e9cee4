//! The `rucat` binary: the roles (`serve`, `server`, `monitor`, `proxy`) and the client
//! (`engine …`). The command line lives in [`cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rucat_client::ClientError;

mod cli;

/// Logs to standard error, filtered by RUCAT_LOG (else `default`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUCAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(hint) = error.downcast_ref::<ClientError>().and_then(auth_hint) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about a refused credential, in one line.
fn auth_hint(error: &ClientError) -> Option<&'static str> {
    match error {
        ClientError::Api { status, .. } if status.as_u16() == 401 => Some(
            "the server wants a valid credential: pass --token TOKEN or set RUCAT_TOKEN (an operator makes tokens with `rucat token create --user NAME`)",
        ),
        ClientError::Api { status, code, .. } if status.as_u16() == 403 && code == "forbidden" => {
            Some("this needs an admin: use an admin token (`rucat token create --user NAME --admin`)")
        }
        _ => None,
    }
}
