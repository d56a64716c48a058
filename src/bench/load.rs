//! Load generators: HTTP requests from a fixed number of concurrent
//! clients, timing each one, and MQTT QoS 1 publishing and subscribing with
//! an ordinary client (rumqttc), counting acknowledgements.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;

use super::BenchError;

/// How long any one MQTT run may take before the bench gives up.
const MQTT_TIMEOUT: Duration = Duration::from_secs(300);
/// Unacknowledged QoS 1 messages per publisher (the embedded broker allows
/// 1,000 per connection).
const PUBLISH_WINDOW: u16 = 1_000;

/// Builds request `i` of a run.
pub type RequestFactory = Arc<dyn Fn(usize) -> reqwest::RequestBuilder + Send + Sync>;

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub elapsed: Duration,
    /// One per request, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadRun {
    pub fn per_second(&self, items_per_request: usize) -> f64 {
        (self.latencies.len() * items_per_request) as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0 ≤ q ≤ 1) of the latencies, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        millis(self.latencies[index])
    }

    pub fn mean_ms(&self) -> f64 {
        let total: Duration = self.latencies.iter().sum();
        millis(total) / self.latencies.len().max(1) as f64
    }
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Sends `requests` requests from `concurrency` clients, each waiting for
/// its answer before sending the next. Any answer but a success is an error.
pub async fn http_load(
    requests: usize,
    concurrency: usize,
    request: RequestFactory,
) -> Result<LoadRun, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, request) = (next.clone(), request.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return Ok::<_, BenchError>(latencies);
                    }
                    let sent = Instant::now();
                    let response = request(i).send().await?;
                    let status = response.status();
                    let body = response.bytes().await?;
                    if !status.is_success() {
                        return Err(BenchError::Service(format!(
                            "request {i} answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        )));
                    }
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for worker in workers {
        let done = worker
            .await
            .map_err(|e| BenchError::Service(format!("a load task failed: {e}")))?;
        latencies.extend(done?);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(LoadRun { elapsed, latencies })
}

/// A QoS 1 publisher whose acknowledgements are counted.
pub struct Publisher {
    client: AsyncClient,
    acked: mpsc::UnboundedReceiver<()>,
}

impl Publisher {
    pub async fn connect(port: u16, client_id: &str) -> Result<Self, BenchError> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(PUBLISH_WINDOW);
        let (client, mut eventloop) = AsyncClient::new(options, 1_000);
        let (ack, acked) = mpsc::unbounded_channel();
        let (ready, mut connected) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ready.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if ack.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "bench publisher connection lost");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        within(MQTT_TIMEOUT, connected.recv()).await?;
        Ok(Self { client, acked })
    }

    /// Publishes `count` messages built by `message(i)`, then waits until
    /// the broker acknowledged all of them.
    pub async fn publish_all(
        &mut self,
        count: usize,
        message: impl Fn(usize) -> (String, String),
    ) -> Result<(), BenchError> {
        let mut acknowledged = 0;
        for i in 0..count {
            let (topic, payload) = message(i);
            self.client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| BenchError::Mqtt(e.to_string()))?;
            while self.acked.try_recv().is_ok() {
                acknowledged += 1;
            }
        }
        while acknowledged < count {
            within(MQTT_TIMEOUT, self.acked.recv()).await?;
            acknowledged += 1;
        }
        Ok(())
    }
}

/// A QoS 1 subscriber that counts the messages it receives.
pub struct Subscriber {
    received: mpsc::UnboundedReceiver<()>,
}

impl Subscriber {
    /// Connects and returns once the subscription to `filter` is in place.
    pub async fn subscribe(port: u16, client_id: &str, filter: &str) -> Result<Self, BenchError> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 1_000);
        let (tx, received) = mpsc::unbounded_channel();
        let (ready, mut subscribed) = mpsc::unbounded_channel();
        let filter = filter.to_string();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "bench subscriber connection lost");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        within(MQTT_TIMEOUT, subscribed.recv()).await?;
        Ok(Self { received })
    }

    /// Waits until `count` more messages have arrived.
    pub async fn receive(&mut self, count: usize) -> Result<(), BenchError> {
        for _ in 0..count {
            within(MQTT_TIMEOUT, self.received.recv()).await?;
        }
        Ok(())
    }
}

/// Awaits a channel receive, failing after `timeout` or when it closed.
async fn within<T>(
    timeout: Duration,
    receive: impl Future<Output = Option<T>>,
) -> Result<T, BenchError> {
    match tokio::time::timeout(timeout, receive).await {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(BenchError::Mqtt("the MQTT client stopped".into())),
        Err(_) => Err(BenchError::Mqtt(format!(
            "no progress within {} s",
            timeout.as_secs()
        ))),
    }
}
