//! The `energyguard` binary: parses the command line, then either runs the
//! service or acts as a client of a running one. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use energyguard::cli::{Cli, Command, LogFormat, run_client};
use energyguard::config::Config;
use energyguard::node::NodeSettings;

/// mimalloc instead of the system allocator: a request allocates and frees
/// on whichever runtime thread polls it, and a reading crosses to a writer
/// thread, a pattern glibc's malloc serves with contended arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    energyguard::tls::install_default_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serve_default = Command::Serve {
        config: None,
        log_format: LogFormat::Text,
    };
    match cli.command.unwrap_or(serve_default) {
        Command::Serve { config, log_format } => {
            energyguard::logging::init(log_format);
            runtime.block_on(serve(config))
        }
        Command::Node {
            id,
            listen,
            data,
            config,
            log_format,
        } => {
            energyguard::logging::init(log_format);
            runtime.block_on(node(id, listen, data, config))
        }
        command => runtime.block_on(run_client(command, cli.client)),
    }
}

async fn serve(config_file: Option<std::path::PathBuf>) -> ExitCode {
    let config = match Config::load(config_file.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match energyguard::server::serve(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `energyguard node`: one storage node's process.
async fn node(
    id: String,
    listen: std::net::SocketAddr,
    dir: std::path::PathBuf,
    config_file: Option<std::path::PathBuf>,
) -> ExitCode {
    let settings = Config::load(config_file.as_deref()).and_then(|config| {
        let secret = config.cluster.checked_secret()?.to_string();
        let id = id
            .parse()
            .map_err(|e: energyguard::reading::InvalidInput| {
                energyguard::config::ConfigError::Invalid {
                    key: "--id".into(),
                    reason: e.reason,
                }
            })?;
        Ok(NodeSettings {
            id,
            dir,
            secret,
            synchronous: config.storage.synchronous,
        })
    });
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match energyguard::node::serve_node(settings, listen, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received: shutting down"),
        _ = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}
