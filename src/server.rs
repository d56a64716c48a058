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
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::alerts::AlertService;
use crate::config::{API_TOKEN_ENV, Config};
use crate::console::{Live, LiveSources};
use crate::http::admin::KeyCounts;
use crate::http::auth::{Auth, GeneratedToken};
use crate::http::serve::{self, ServeLimits};
use crate::http::{AppState, Services, router};
use crate::ingest::Ingestor;
use crate::latest::LatestReadings;
use crate::mqtt::backlog::Backlog;
use crate::mqtt::broker::{self, BrokerSettings};
use crate::mqtt::embedded::{self, LinkSettings};
use crate::mqtt::external::{self, ConsumerSettings};
use crate::mqtt::front_door::FrontDoor;
use crate::mqtt::front_door::inbound::DoorRules;
use crate::mqtt::front_door::rights::{TopicRights, Users};
use crate::mqtt::intake::Intake;
use crate::mqtt::lag::Lag;
use crate::mqtt::outbox::{self, LinkSender, Outbox};
use crate::mqtt::park::{self, Park};
use crate::mqtt::{ConsumerStatus, Topics};
use crate::replication::ReplicationError;
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
    #[error("{0}: {1}")]
    Tls(&'static str, crate::tls::TlsError),
    #[error("API tokens: {0}")]
    Auth(#[from] crate::http::auth::AuthError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
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
            crate::telemetry::describe();
            spawn_metrics_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample until something drains it,
/// which a scrape of `/metrics` does. Without a scraper that is a leak of a
/// few bytes per request, so a thread of its own drains them
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
    // First, so that what components publish as they open is recorded.
    let metrics = metrics_handle();
    let data_dir = config.data_dir.clone();
    let sync = config.storage.synchronous;
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(TlsAcceptor::from(
            crate::tls::server_config(Path::new(cert), Path::new(key), &[b"http/1.1"])
                .map_err(|e| ServeError::Tls("http.tls_cert / http.tls_key", e))?,
        )),
        _ => None,
    };
    create_private_dir(&data_dir)?;
    tracing::info!(data_dir = %data_dir.display(), "opening storage nodes");
    let replicator = crate::cluster::open(&config).await?;
    crate::telemetry::start_node_counters_at_zero(
        replicator.node_states().iter().map(|report| &report.id),
    );
    let alerts = Arc::new(AlertService::open(&data_dir, sync).await?);
    let latest = Arc::new(LatestReadings::default());
    let seeding_latest = latest.clone().spawn_seed(replicator.clone());
    let ingestor = Arc::new(Ingestor::new(
        replicator.clone(),
        alerts.clone(),
        latest.clone(),
    ));

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
    let mqtt = start_mqtt(
        &config.mqtt,
        &data_dir,
        ingestor.clone(),
        &alerts,
        mqtt_stopping,
    )
    .await?;

    let live = Arc::new(Live::default());
    let sampling_live = live.clone().spawn_sampler(LiveSources {
        ingestor: ingestor.clone(),
        replicator: replicator.clone(),
        alerts: alerts.clone(),
        latest: latest.clone(),
    });
    let key_counts = Arc::new(KeyCounts::default());
    let counting_keys = key_counts.clone().spawn_refresh(replicator.clone());
    let state = AppState::new(Services {
        replicator: replicator.clone(),
        ingestor,
        alerts: alerts.clone(),
        auth: Arc::new(auth),
        metrics,
        mqtt: Some(mqtt.status.clone()),
        key_counts: key_counts.clone(),
        latest: latest.clone(),
        live: live.clone(),
        sessions: Arc::new(crate::console::Sessions::new(tls.is_some())),
    });
    let app = router(state, config.http.max_body_bytes)
        .layer(serve::body_idle_timeout(BODY_IDLE_TIMEOUT));
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("HTTP API listening on {scheme}://{local}");
    let limits = ServeLimits {
        max_connections: config.http.max_connections,
        header_timeout: HEADER_TIMEOUT,
        shutdown_grace: config.http.shutdown_grace()?,
    };
    let shutdown = async {
        shutdown.await;
        live.stop();
    };
    serve::serve(listener, app, tls, limits, shutdown).await;
    sampling_live.abort();
    seeding_latest.abort();
    mqtt.stop(stop_mqtt).await;
    stale_checks.abort();
    counting_keys.abort();
    tracing::info!("shutdown: closing the alert store");
    alerts.close().await;
    tracing::info!("shutdown: flushing and closing storage nodes");
    replicator.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Creates `dir` (and its parents) if missing, the last readable by this
/// user only (0700): it holds every reading and the generated admin token.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// How long a client may take to send a request's headers (and a TLS
/// handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may send nothing before the request is dropped.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Broker password checks running at once at most (one per core).
const PASSWORD_CHECKS: usize = 2;

/// How long each MQTT shutdown step may take.
const MQTT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The running MQTT side.
struct Mqtt {
    status: Arc<ConsumerStatus>,
    consumer: JoinHandle<()>,
    alert_publisher: JoinHandle<()>,
    flusher: JoinHandle<()>,
    park: Arc<Park>,
    /// The embedded broker's relay, closed first at shutdown.
    front_door: Option<FrontDoor>,
}

impl Mqtt {
    /// Stops intake (closing the front door first), stores what was
    /// received, then stops the flusher and closes the park.
    async fn stop(self, stop: tokio::sync::watch::Sender<bool>) {
        if let Some(front_door) = self.front_door {
            tracing::info!("shutdown: closing MQTT connections; no new readings");
            if !front_door.close(MQTT_STOP_TIMEOUT).await {
                tracing::warn!(
                    "shutdown: the embedded broker kept connections open past the timeout"
                );
            }
        }
        tracing::info!("shutdown: stopping MQTT intake; storing what was received");
        let _ = stop.send(true);
        if tokio::time::timeout(MQTT_STOP_TIMEOUT, self.consumer)
            .await
            .is_err()
        {
            tracing::warn!("shutdown: the MQTT consumer did not finish within 30 s");
        }
        let _ = self.alert_publisher.await;
        let _ = self.flusher.await;
        self.park.close().await;
    }
}

/// Starts the embedded broker (when configured), the consumer, the alert
/// publisher and the flusher of parked readings.
async fn start_mqtt(
    mqtt: &crate::config::MqttConfig,
    data_dir: &std::path::Path,
    ingestor: Arc<Ingestor>,
    alerts: &AlertService,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Mqtt, ServeError> {
    let topics = Topics::new(&mqtt.topic_prefix);
    let park = Arc::new(Park::open(data_dir)?);
    let flusher = park::spawn_flusher(park.clone(), ingestor.clone(), stopping.clone());
    let (status, consumer, outbox, front_door) = if mqtt.embedded {
        start_embedded(mqtt, &topics, ingestor, park.clone(), stopping.clone()).await?
    } else {
        let settings = ConsumerSettings {
            url: mqtt.url.clone().unwrap_or_default(),
            ca_file: mqtt.ca_file.clone().map(Into::into),
            credentials: mqtt
                .username
                .clone()
                .map(|username| (username, mqtt.password.clone().unwrap_or_default())),
            client_id: mqtt.client_id.clone(),
            filter: topics.readings_filter(&mqtt.share_group),
            batch_messages: mqtt.batch_messages,
            max_packet_bytes: mqtt.max_payload_bytes + 1024,
        };
        let connection = external::connect(&settings)?;
        let outbox = Outbox::Client(connection.client.clone());
        let status = Arc::new(ConsumerStatus::new(park.clone(), None, Arc::default()));
        let intake = Intake {
            topics: topics.clone(),
            ingestor,
            park: park.clone(),
            outbox: outbox.clone(),
        };
        let consumer = external::spawn(
            settings,
            connection,
            intake,
            status.clone(),
            stopping.clone(),
        );
        (status, consumer, outbox, None)
    };
    let alert_publisher =
        outbox::spawn_alert_publisher(topics, outbox, alerts.subscribe(), stopping);
    Ok(Mqtt {
        status,
        consumer,
        alert_publisher,
        flusher,
        park,
        front_door,
    })
}

/// The embedded broker, its in-process consumer, and its front door,
/// opened once the consumer is subscribed (so no reading published through
/// it finds nobody subscribed).
async fn start_embedded(
    mqtt: &crate::config::MqttConfig,
    topics: &Topics,
    ingestor: Arc<Ingestor>,
    park: Arc<Park>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<
    (
        Arc<ConsumerStatus>,
        JoinHandle<()>,
        Outbox,
        Option<FrontDoor>,
    ),
    ServeError,
> {
    if mqtt.url.is_some() {
        tracing::warn!("mqtt.url is ignored while mqtt.embedded is true");
    }
    if !mqtt.share_group.is_empty() {
        tracing::warn!("mqtt.share_group is ignored while mqtt.embedded is true");
    }
    let settings = BrokerSettings {
        listen: mqtt.listen,
        max_payload_bytes: mqtt.max_payload_bytes,
        memory_mb: mqtt.broker_memory_mb,
        client_id: mqtt.client_id.clone(),
        tls: match (mqtt.tls_listen()?, &mqtt.tls_cert, &mqtt.tls_key) {
            (Some(address), Some(cert), Some(key)) => Some((
                address,
                crate::tls::server_config(Path::new(cert), Path::new(key), &[])
                    .map_err(|e| ServeError::Tls("mqtt.tls_cert / mqtt.tls_key", e))?,
            )),
            _ => None,
        },
    };
    let broker = broker::start(&settings).await?;
    let filter = topics.readings_filter("");
    let outbox = Outbox::Link(LinkSender::start(broker.link_tx, &filter)?);
    let lag = Arc::new(Lag::default());
    let backlog = Arc::new(Backlog::new(settings.safe_backlog_bytes(), lag.clone()));
    let status = Arc::new(ConsumerStatus::new(
        park.clone(),
        Some(backlog.clone()),
        lag,
    ));
    let intake = Intake {
        topics: topics.clone(),
        ingestor,
        park,
        outbox: outbox.clone(),
    };
    let consumer = embedded::spawn(
        broker.link_rx,
        intake,
        backlog.clone(),
        status.clone(),
        LinkSettings {
            batch_messages: mqtt.batch_messages,
            drain_marker: topics.drain_marker(),
        },
        stopping,
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !status.subscribed() {
        if tokio::time::Instant::now() > deadline {
            return Err(ServeError::Broker(broker::BrokerError::Listen {
                listen: mqtt.listen,
                reason: "its in-process link was not subscribed within 10 s".into(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rules = Arc::new(DoorRules {
        readings_filter: filter,
        reserved_client_id: mqtt.client_id.clone(),
        max_packet_bytes: mqtt.max_payload_bytes + 1024,
        backlog,
        // Anonymous clients: with no users, only on loopback (or if asked
        // for, which validation requires on a public address).
        users: Users::new(&mqtt.users, mqtt.allow_anonymous || mqtt.users.is_empty()),
        rights: TopicRights::new(&mqtt.topic_prefix),
        broker_login: broker.login,
        checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS),
    });
    let door = broker.door.open(rules, mqtt.max_connections);
    Ok((status, consumer, outbox, Some(door)))
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
