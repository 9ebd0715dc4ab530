//! `apr serve`: an OpenAI-compatible HTTP server over one engine thread.
//!
//! - `config`: the flags, the TOML file and the defaults, merged.
//! - `engine`: the thread that owns the model; requests take turns in its slots.
//! - `routes`: the HTTP handlers, authentication, CORS and body limits.
//! - `api`: the request and response bodies and their checks.
//! - `error`: OpenAI-shaped errors.
//! - `metrics`: the Prometheus counters.
//!
//! Connections are served by hyper with a deadline for request headers and a cap on their size;
//! bodies have their own size limit and deadline. SIGTERM (or Ctrl-C) closes the listener, lets
//! running requests finish up to the drain deadline, and returns.

mod api;
pub(crate) mod config;
mod engine;
mod error;
mod metrics;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use self::config::ServeConfig;
use self::metrics::Metrics;
use self::routes::AppState;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers); hyper checks it between reads, so a head
/// up to about twice this may pass when it arrives in one piece.
const HEADER_LIMIT: usize = 32 << 10;

/// Serves until SIGTERM or Ctrl-C.
pub(crate) fn run(config: ServeConfig) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("apr-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: ServeConfig) -> Result<()> {
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let address = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let (jobs, queue) = mpsc::channel(config.max_queue);
    let (ready_tx, mut ready) = oneshot::channel();
    let _engine = engine::spawn(&config, queue, metrics.clone(), ready_tx)?;
    let state = Arc::new(AppState::new(
        jobs,
        metrics,
        config.api_key.as_deref(),
        config.parallel,
    ));
    let app = routes::router(state.clone(), &config.cors_origins)?;
    eprintln!(
        "apr: listening on http://{address} ({} slots of {} positions, queue {}{}); loading {}",
        config.parallel,
        config.ctx_size,
        config.max_queue,
        if config.api_key.is_some() {
            ", API key required"
        } else {
            ""
        },
        config.model
    );

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(HEADER_LIMIT);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut loading = true;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        eprintln!("apr: cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            loaded = &mut ready, if loading => {
                loading = false;
                match loaded {
                    Ok(Ok(loaded)) => {
                        eprintln!("apr: model loaded: {} ({})", loaded.id, loaded.backend);
                        state.set_loaded(loaded);
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => bail!("the engine stopped while loading the model"),
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    state.set_draining();
    eprintln!(
        "apr: shutting down; letting running requests finish (up to {} s)",
        config.drain_timeout.as_secs()
    );
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("apr: the drain deadline passed; closing the remaining connections");
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
