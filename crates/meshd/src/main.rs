//! meshd, the daemon on every host of a meshd cluster.

mod agent;
mod api;
mod config;
mod daemon;
mod engine;
mod executor;
mod local;
mod mesh;
mod meshplan;
mod netplan;
mod network;
mod peers;
mod remote;
mod workload;

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

fn main() -> ExitCode {
    // `meshd __shim …`: the supervisor of one container (see mesh-agent), not the daemon.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__shim") {
        args.remove(1);
        let code = mesh_agent::shim_main(args.split_off(1));
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let flags = config::Flags::parse();
    let cfg = match config::Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshd: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "meshd failed");
            eprintln!("meshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: config::Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating --data-dir {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing --data-dir {}", cfg.data_dir.display()))?;
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "creating the directory of --socket {}",
                cfg.socket.display()
            )
        })?;
    }
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let d = daemon::Daemon::new(cfg.clone())?;
    d.resume().await.context("resuming from the data dir")?;

    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing stale socket {}", cfg.socket.display()));
        }
    }
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listening on --socket {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting permissions of {}", cfg.socket.display()))?;
    let app = api::router(d.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });
    if let Some(addr) = cfg.remote_api_addr {
        let remote = tokio::spawn(remote::serve(
            d.clone(),
            addr,
            api::router(d.clone()),
            stop_tx.subscribe(),
        ));
        // Fail early if the port can't be bound.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if remote.is_finished() {
            match remote.await {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
                Err(e) => return Err(anyhow::anyhow!("remote API task failed: {e}")),
            }
        }
    }
    info!(socket = %cfg.socket.display(), listen = %cfg.listen_addr, "meshd is up");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    d.shutdown().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), server).await;
    let _ = std::fs::remove_file(&cfg.socket);
    info!("meshd stopped");
    Ok(())
}
