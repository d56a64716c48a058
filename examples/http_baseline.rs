//! The baseline for HTTP benchmarks: an axum server whose one handler does
//! nothing, on the same runtime settings as EnergyGuard. Compare a route's
//! requests per second with this one's on the same machine:
//!
//! ```text
//! cargo run --release --example http_baseline -- 127.0.0.1:5099
//! wrk -t2 -c32 -d10s http://127.0.0.1:5099/
//! ```

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5099".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/", get(|| async { "hello" }));
    axum::serve(listener, app).await
}
