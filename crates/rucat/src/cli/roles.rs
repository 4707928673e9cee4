//! `rucat serve`, `server`, `monitor` and `proxy`: the roles, in this process. Their flags are
//! [`RoleArgs`].

use rucat::app::{Application, Roles};
use rucat::config::{FileConfig, RoleArgs, Settings};
use rucat::shutdown;

/// Runs `roles` until a shutdown signal.
pub async fn run(args: RoleArgs, file: FileConfig, roles: Roles) -> anyhow::Result<()> {
    super::init_logging("info");
    let settings = Settings::resolve(args, file)?;
    let application = Application::build(&settings, roles).await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("shutdown requested; finishing requests and steps under way");
        trigger.fire();
    });
    application.run(shutdown).await?;
    Ok(())
}
