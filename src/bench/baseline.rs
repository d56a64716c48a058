//! The HTTP ceiling: an axum server whose one handler does nothing, measured
//! with the same load generator as the service (`examples/http_baseline.rs`
//! serves the same router for external tools such as `wrk`).

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::sync::oneshot;

use super::BenchError;
use super::load::{RequestFactory, http_load};
use super::report::{Parameters, median};

/// The empty handler.
pub fn router() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// Requests per second the empty handler answers, median of the
/// repetitions after a warm-up. The server runs on a runtime of its own
/// (two worker threads, like the service's), apart from the load generator.
pub async fn empty_handler_rate(p: &Parameters) -> Result<f64, BenchError> {
    let (address_tx, address_rx) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("bench-baseline".into())
        .spawn(move || -> std::io::Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let _ = address_tx.send(listener.local_addr()?);
                axum::serve(listener, router())
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        })?;
    let address = address_rx
        .await
        .map_err(|_| BenchError::Service("the baseline server did not start".into()))?;
    let client = reqwest::Client::new();
    let url = format!("http://{address}/");
    let factory: RequestFactory = Arc::new(move |_| client.get(&url));
    let mut rates = Vec::new();
    http_load(p.requests / 10, p.http_concurrency, factory.clone()).await?;
    for _ in 0..p.repetitions {
        rates.push(
            http_load(p.requests, p.http_concurrency, factory.clone())
                .await?
                .per_second(1),
        );
    }
    let _ = stop.send(());
    let joined = tokio::task::spawn_blocking(move || server.join())
        .await
        .map_err(|e| BenchError::Service(e.to_string()))?;
    match joined {
        Ok(served) => served?,
        Err(_) => return Err(BenchError::Service("the baseline server panicked".into())),
    }
    Ok(median(rates))
}
