//! The baseline for HTTP benchmarks with external tools: an axum server
//! whose one handler does nothing (the router `energyguard bench` measures
//! as its HTTP ceiling). Compare a route's requests per second with this
//! one's on the same machine:
//!
//! ```text
//! cargo run --release --example http_baseline -- 127.0.0.1:5099
//! wrk -t2 -c32 -d10s http://127.0.0.1:5099/
//! ```

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5099".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, energyguard::bench::baseline::router()).await
}
