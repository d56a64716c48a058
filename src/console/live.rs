//! Live updates for open console pages: server-sent events (`/ui/events`)
//! and the same snapshot as JSON for polling (`/ui/live`) when the stream
//! cannot be held.
//!
//! One sampler task builds what every page shares once a second (ingest
//! rates by door, node states, firing alerts, stale sensors) and publishes
//! it on a watch channel; each stream adds only the last values of the
//! sensors its page shows (at most [`MAX_WATCHED`]). So the cost of a
//! stream does not grow with the installation, streams are at most
//! [`MAX_STREAMS`] (a page beyond that polls), and each ends after
//! [`STREAM_LIFETIME`] so its session is checked again when the browser
//! reconnects. Every stream ends when the service stops.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::sensors::{StaleLimits, firing_now};
use super::session::Viewer;
use super::view::number;
use crate::alerts::AlertService;
use crate::alerts::engine::kind_name;
use crate::http::AppState;
use crate::ingest::{Door, Ingestor};
use crate::latest::LatestReadings;
use crate::reading::{SensorId, now_ms};
use crate::replication::{NodeStatus, Replicator};

/// Event streams open at once at most.
pub const MAX_STREAMS: usize = 64;
/// Sensors one page may watch.
pub const MAX_WATCHED: usize = 100;
/// How long one stream lasts before the browser reconnects.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// How often the shared part is rebuilt.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Ingest rates are averaged over this many samples.
const RATE_SAMPLES: usize = 10;
/// Firing alerts sent to pages at most (the count is always whole).
const FIRING_SENT: usize = 20;

/// What every page shares, rebuilt once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Shared {
    /// When this was built (epoch ms): a page rendered later already shows
    /// newer states and ignores it.
    pub taken_ms: i64,
    /// Counts changes of what pages list (firing alerts, node states): a
    /// page rendered at an older version fetches its lists again.
    pub version: u64,
    /// Readings stored per second over the last seconds, by door.
    pub rate_http: f64,
    pub rate_mqtt: f64,
    pub nodes: Vec<NodeLive>,
    pub nodes_up: usize,
    pub firing_total: usize,
    pub firing: Vec<FiringLive>,
    pub stale_sensors: usize,
    /// Whether the sensor list is complete (storage has been walked).
    pub sensors_complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeLive {
    pub id: String,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub hints_pending: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FiringLive {
    pub id: String,
    pub sensor: String,
    pub kind: &'static str,
    pub started_ms: i64,
    pub peak: String,
}

/// The console's live side: the shared snapshot and the stream budget.
pub struct Live {
    shared: watch::Sender<Arc<Shared>>,
    streams: Arc<Semaphore>,
    /// Set when the service stops: every stream ends.
    stopping: watch::Sender<bool>,
}

impl Live {
    /// Event streams open now.
    pub fn streams_open(&self) -> usize {
        MAX_STREAMS - self.streams.available_permits()
    }
}

impl Default for Live {
    fn default() -> Self {
        Self {
            shared: watch::Sender::new(Arc::new(Shared::default())),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            stopping: watch::Sender::new(false),
        }
    }
}

/// What the sampler reads.
pub struct Sources {
    pub ingestor: Arc<Ingestor>,
    pub replicator: Arc<Replicator>,
    pub alerts: Arc<AlertService>,
    pub latest: Arc<LatestReadings>,
}

impl Live {
    /// The shared snapshot last built.
    pub fn current(&self) -> Arc<Shared> {
        self.shared.borrow().clone()
    }

    /// Ends every stream; pages fall back to polling until the service is
    /// gone.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Rebuilds the shared snapshot every second (`SAMPLE_EVERY`), until
    /// aborted.
    pub fn spawn_sampler(self: Arc<Self>, sources: Sources) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut counts: VecDeque<(Instant, u64, u64)> = VecDeque::new();
            let mut version = 0;
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let accepted = sources.ingestor.accepted();
                counts.push_back((
                    Instant::now(),
                    accepted.get(Door::Http),
                    accepted.get(Door::Mqtt),
                ));
                if counts.len() > RATE_SAMPLES {
                    counts.pop_front();
                }
                let mut shared = sample(&sources, &counts).await;
                let previous = self.current();
                if !same_lists(&shared, &previous) {
                    version += 1;
                }
                shared.version = version;
                self.shared.send_replace(Arc::new(shared));
            }
        })
    }
}

/// Whether what pages list (firing alerts, node states; not hint counts,
/// which move every second during an outage) is the same in both.
fn same_lists(a: &Shared, b: &Shared) -> bool {
    let firing = |s: &Shared| s.firing.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
    let nodes = |s: &Shared| {
        s.nodes
            .iter()
            .map(|n| (n.id.clone(), n.status, n.reason))
            .collect::<Vec<_>>()
    };
    a.firing_total == b.firing_total && firing(a) == firing(b) && nodes(a) == nodes(b)
}

async fn sample(sources: &Sources, counts: &VecDeque<(Instant, u64, u64)>) -> Shared {
    let (rate_http, rate_mqtt) = match (counts.front(), counts.back()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            let seconds = (last.0 - first.0).as_secs_f64();
            (
                (last.1 - first.1) as f64 / seconds,
                (last.2 - first.2) as f64 / seconds,
            )
        }
        _ => (0.0, 0.0),
    };
    let nodes: Vec<NodeLive> = sources
        .replicator
        .node_states()
        .into_iter()
        .map(|n| NodeLive {
            id: n.id.to_string(),
            status: n.status.as_str(),
            reason: n.reason.map(|r| r.as_str()),
            hints_pending: n.hints_pending,
        })
        .collect();
    let firing = firing_now(&sources.alerts).await;
    let limits = StaleLimits::read(&sources.alerts).await;
    let now = now_ms();
    let stale_sensors = sources
        .latest
        .count(|sensor, latest| now - latest.timestamp_ms > limits.of(sensor));
    Shared {
        taken_ms: now,
        version: 0,
        rate_http,
        rate_mqtt,
        nodes_up: nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Up.as_str())
            .count(),
        nodes,
        firing_total: firing.len(),
        firing: firing
            .iter()
            .take(FIRING_SENT)
            .map(|a| FiringLive {
                id: a.id.clone(),
                sensor: a.sensor_id.to_string(),
                kind: kind_name(a.kind),
                started_ms: a.started_at,
                peak: number(a.peak),
            })
            .collect(),
        stale_sensors,
        sensors_complete: sources.latest.is_seeded(),
    }
}

/// What a page asks to follow.
#[derive(Deserialize)]
pub struct Watch {
    /// Sensor ids, comma separated.
    #[serde(default)]
    sensors: String,
}

impl Watch {
    fn sensors(&self) -> Vec<SensorId> {
        self.sensors
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .take(MAX_WATCHED)
            .collect()
    }
}

/// One message to a page: the shared part and its sensors' last values.
#[derive(Serialize)]
struct Snapshot {
    now_ms: i64,
    #[serde(flatten)]
    shared: Arc<Shared>,
    sensors: BTreeMap<String, SensorLive>,
}

#[derive(Serialize)]
struct SensorLive {
    value: String,
    unit: String,
    timestamp_ms: i64,
}

fn snapshot(state: &AppState, shared: Arc<Shared>, sensors: &[SensorId]) -> Snapshot {
    let sensors = sensors
        .iter()
        .filter_map(|id| {
            state.latest.get(id).map(|l| {
                (
                    id.to_string(),
                    SensorLive {
                        value: number(l.value),
                        unit: l.unit.map(|u| u.as_str().to_string()).unwrap_or_default(),
                        timestamp_ms: l.timestamp_ms,
                    },
                )
            })
        })
        .collect();
    Snapshot {
        now_ms: now_ms(),
        shared,
        sensors,
    }
}

/// `GET /ui/live`: the snapshot once, for pages polling.
pub async fn poll(
    State(state): State<AppState>,
    _: Viewer,
    Query(watch): Query<Watch>,
) -> Response {
    Json(snapshot(&state, state.live.current(), &watch.sensors())).into_response()
}

/// A stream's state between events.
struct Stream {
    state: AppState,
    sensors: Vec<SensorId>,
    shared: watch::Receiver<Arc<Shared>>,
    stopping: watch::Receiver<bool>,
    ends: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

/// `GET /ui/events`: the snapshot each time the shared part is rebuilt.
pub async fn events(
    State(state): State<AppState>,
    _: Viewer,
    Query(watch): Query<Watch>,
) -> Response {
    let Ok(permit) = state.live.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live pages; this one polls",
        )
            .into_response();
    };
    let mut shared = state.live.shared.subscribe();
    shared.mark_changed();
    let stream = Stream {
        sensors: watch.sensors(),
        shared,
        stopping: state.live.stopping.subscribe(),
        ends: tokio::time::Instant::now() + STREAM_LIFETIME,
        state,
        _permit: permit,
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        if *stream.stopping.borrow() {
            return None;
        }
        tokio::select! {
            changed = stream.shared.changed() => changed.ok()?,
            _ = stream.stopping.changed() => return None,
            () = tokio::time::sleep_until(stream.ends) => return None,
        }
        let shared = stream.shared.borrow_and_update().clone();
        let message = snapshot(&stream.state, shared, &stream.sensors);
        let event = Event::default().json_data(&message).unwrap_or_default();
        Some((Ok::<_, Infallible>(event), stream))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
