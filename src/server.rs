//! The composition root: builds every part from a [`Config`], serves the
//! API until the shutdown future resolves, then tears down in order.
//!
//! Start: storage nodes and cluster state (the replicator), alerts, auth,
//! the MQTT broker (when embedded) and consumer, then the HTTP listener.
//! Stop (SIGTERM, Ctrl-C): stop accepting requests and let in-flight ones
//! finish; stop MQTT intake, storing and acknowledging what was received;
//! then flush and close the alert store and every storage node. Each step
//! is logged.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::alerts::AlertService;
use crate::config::{API_TOKEN_ENV, Config};
use crate::http::auth::{Auth, GeneratedToken};
use crate::http::{AppState, Services, router};
use crate::ingest::Ingestor;
use crate::mqtt::Topics;
use crate::mqtt::broker::{self, BrokerSettings};
use crate::mqtt::consumer::{self, ConsumerSettings, ConsumerStatus};
use crate::mqtt::front_door::FrontDoor;
use crate::replication::{PlacementSpec, ReplicationError, Replicator};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {address} (http.listen): {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Broker(#[from] crate::mqtt::broker::BrokerError),
    #[error("mqtt.url {0}")]
    MqttUrl(#[from] crate::mqtt::UrlError),
}

/// One Prometheus recorder per process (the `metrics` facade is global).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            spawn_metrics_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample until something drains it,
/// which a scrape of `/metrics` does. Without a scraper that is a leak (about
/// 19 bytes per request, measured), so a thread of its own drains them
/// periodically: a thread rather than a task, because the recorder outlives
/// any one runtime (tests run many).
fn spawn_metrics_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no metrics upkeep thread: histograms grow until /metrics is scraped");
    }
}

/// Binds `config.http.listen` and serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = config.http.listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Listen {
            address: address.to_string(),
            source,
        })?;
    run(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let data_dir = config.data_dir.clone();
    let sync = config.storage.synchronous;
    tracing::info!(data_dir = %data_dir.display(), "opening storage nodes");
    let spec = PlacementSpec {
        settings: config.replication.settings(),
        nodes: config.replication.nodes.clone(),
    };
    let replicator = Replicator::open_sqlite(&data_dir, spec, sync).await?;
    replicator.start_background();
    let alerts = Arc::new(AlertService::open(&data_dir, sync).await?);
    let ingestor = Arc::new(Ingestor::new(replicator.clone(), alerts.clone()));

    let (auth, generated) = Auth::load(
        &config.auth.tokens,
        std::env::var(API_TOKEN_ENV).ok(),
        &data_dir,
    )?;
    match generated {
        GeneratedToken::Created(path) => {
            tracing::warn!(path = %path.display(), "no API token configured: generated an admin token")
        }
        GeneratedToken::Reused(path) => {
            tracing::info!(path = %path.display(), "using the generated admin token")
        }
        GeneratedToken::None => {}
    }
    let stale_checks = tokio::spawn(check_stale_sensors(alerts.clone()));
    let (stop_mqtt, mqtt_stopping) = tokio::sync::watch::channel(false);
    let mqtt = start_mqtt(&config.mqtt, ingestor.clone(), &alerts, mqtt_stopping).await?;

    let state = AppState::new(Services {
        replicator: replicator.clone(),
        ingestor,
        alerts: alerts.clone(),
        auth: Arc::new(auth),
        metrics: metrics_handle(),
        mqtt: Some(mqtt.status),
        key_counts: Default::default(),
    });
    let app = router(state, config.http.max_body_bytes);
    let local = listener.local_addr()?;
    tracing::info!("HTTP API listening on http://{local}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutdown: no new requests; finishing requests in flight");
        })
        .await?;
    if let Some(front_door) = mqtt.front_door {
        tracing::info!("shutdown: closing MQTT connections; no new readings");
        if !front_door.close(MQTT_STOP_TIMEOUT).await {
            tracing::warn!("shutdown: the embedded broker kept connections open past the timeout");
        }
    }
    tracing::info!("shutdown: stopping MQTT intake; storing and acknowledging what was received");
    let _ = stop_mqtt.send(true);
    if tokio::time::timeout(MQTT_STOP_TIMEOUT, mqtt.consumer)
        .await
        .is_err()
    {
        tracing::warn!("shutdown: the MQTT consumer did not finish within 30 s");
    }
    stale_checks.abort();
    tracing::info!("shutdown: closing the alert store");
    alerts.close().await;
    tracing::info!("shutdown: flushing and closing storage nodes");
    replicator.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// How long each MQTT shutdown step may take.
const MQTT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The running MQTT side.
struct Mqtt {
    status: Arc<ConsumerStatus>,
    consumer: tokio::task::JoinHandle<()>,
    /// The embedded broker's relay, closed first at shutdown.
    front_door: Option<FrontDoor>,
}

/// Starts the embedded broker (when configured) and the consumer.
async fn start_mqtt(
    mqtt: &crate::config::MqttConfig,
    ingestor: Arc<Ingestor>,
    alerts: &AlertService,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Mqtt, ServeError> {
    let mut settings = ConsumerSettings {
        url: mqtt.url.clone().unwrap_or_default(),
        credentials: mqtt
            .username
            .clone()
            .map(|username| (username, mqtt.password.clone().unwrap_or_default())),
        client_id: mqtt.client_id.clone(),
        topics: Topics::new(&mqtt.topic_prefix),
        share_group: mqtt.share_group.clone(),
        batch_messages: mqtt.batch_messages,
        batch_interval: Duration::from_millis(mqtt.batch_interval_ms),
        max_packet_bytes: mqtt.max_payload_bytes + 1024,
        drain_marker: None,
    };
    let mut front_door = None;
    if mqtt.embedded {
        if mqtt.url.is_some() {
            tracing::warn!("mqtt.url is ignored while mqtt.embedded is true");
        }
        let broker = broker::start(&BrokerSettings {
            listen: mqtt.listen,
            max_payload_bytes: mqtt.max_payload_bytes,
            memory_mb: mqtt.broker_memory_mb,
        })
        .await?;
        settings.url = format!("mqtt://{}", broker.internal);
        settings.drain_marker = Some(settings.topics.drain_marker());
        // The embedded broker never has more unacknowledged messages out:
        // store as soon as that many arrived rather than wait for more.
        settings.batch_messages = settings.batch_messages.min(broker::OUTGOING_INFLIGHT);
        front_door = Some(broker.front_door);
    }
    let (status, consumer) = consumer::spawn(settings, ingestor, alerts.subscribe(), stopping)?;
    Ok(Mqtt {
        status,
        consumer,
        front_door,
    })
}

/// How often silent sensors are looked for (`stale_after` is at least 1 s).
const STALE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Raises `stale` alerts for sensors that went silent, until aborted.
async fn check_stale_sensors(alerts: Arc<AlertService>) {
    let mut interval = tokio::time::interval(STALE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        match alerts.tick(crate::reading::now_ms()).await {
            Ok(changes) => crate::ingest::record_alert_metrics(&changes),
            Err(error) => tracing::error!(%error, "checking for silent sensors failed"),
        }
    }
}
