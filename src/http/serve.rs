//! Serving the API: accepting connections (plain or TLS) under the limits
//! a public address needs, and stopping gracefully.
//!
//! * At most `max_connections` connections at once; one more is closed at
//!   once, not queued, and counted in
//!   `energyguard_http_connections_refused_total`.
//! * A client has `header_timeout` to send a request's headers (hyper's
//!   header read timeout), and a TLS handshake as long; a body that sends
//!   nothing for `body_idle_timeout` ends its request (a layer on the
//!   router, [`body_idle_timeout`]).
//! * On shutdown: no new connections, requests in flight finish, and after
//!   `shutdown_grace` whatever is left is dropped.
//!
//! HTTP/1.1 only: what meters, scripts, browsers and Prometheus speak.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// The limits of [`serve`].
#[derive(Debug, Clone)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// The router layer that ends a request whose body stays silent for
/// `timeout` between two chunks.
pub fn body_idle_timeout(timeout: Duration) -> tower_http::timeout::RequestBodyTimeoutLayer {
    tower_http::timeout::RequestBodyTimeoutLayer::new(timeout)
}

/// Serves `app` on `listener` (through `tls` when given) until `shutdown`
/// resolves, then lets requests in flight finish for up to the grace time.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, typically: wait rather than spin.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("energyguard_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "HTTP connection refused: http.max_connections reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            http: http.clone(),
            service: TowerToHyperService::new(app.clone()),
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            match tls {
                None => connection.serve(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutdown: no new requests; finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "shutdown: requests still in flight after the grace time are dropped");
        }
    }
}

/// What serves one accepted connection.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
}

impl Connection {
    async fn serve(self, io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static) {
        let connection = self.http.serve_connection(TokioIo::new(io), self.service);
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!(%error, "HTTP connection ended with an error");
        }
    }
}
