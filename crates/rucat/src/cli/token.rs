//! `rucat token create`: a new API token, shown once, and its configuration entry.

use std::io::Write;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rucat::auth::token::{self, TokenEntry};
use rucat::auth::Role;

use super::output::OutputFormat;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random API token (256 bits) once, with the configuration entry that lets it
    /// in: add the entry to the tokens file ([auth] tokens_file, read again when it changes) or
    /// as [[auth.tokens]] to the configuration file, and give the token to its user. Rucat keeps
    /// only the token's SHA-256; a lost token cannot be shown again, only replaced.
    Create {
        /// The user the token authenticates as (the owner of the engines they create)
        #[arg(long, value_name = "NAME")]
        user: String,
        /// Make it an admin token: it sees and acts on every engine
        #[arg(long)]
        admin: bool,
        /// Print {"user", "role", "token", "hash"} as JSON instead: --output json
        #[arg(long)]
        json: bool,
        /// Print the token and its configuration entry (table), or {"user", "role", "token",
        /// "hash"} as JSON
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            user,
            admin,
            json,
            output,
        } => create(user, admin, json || output == OutputFormat::Json),
    }
}

/// `rucat token create`: a new token, shown once, and its configuration entry.
fn create(user: String, admin: bool, json: bool) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    rucat::auth::check_user_name(&user).map_err(anyhow::Error::msg)?;
    let (secret, hash) = token::generate().map_err(anyhow::Error::msg)?;
    let entry = TokenEntry {
        user,
        role: if admin { Role::Admin } else { Role::User },
        hash,
    };
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "user": entry.user,
            "role": entry.role,
            "token": secret.expose_secret(),
            "hash": entry.hash,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "# The token of {} (shown this once; Rucat keeps only its hash):\n{}\n\n\
             # Add this entry to the tokens file (or as [[auth.tokens]] to the configuration file):\n{}",
            entry.user,
            secret.expose_secret(),
            token::entry_toml(&entry, "tokens")
        )?;
    }
    out.flush().context("cannot write to standard output")?;
    Ok(())
}
