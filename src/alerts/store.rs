//! Durable thresholds, alert episodes and per-sensor evaluation progress,
//! in `<data_dir>/alerts.sqlite3`, written through a group-commit worker.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Row, Transaction, params};

use super::AlertQuery;
use super::engine::{Alert, AlertKind, AlertState, Threshold, kind_name};
use crate::reading::SensorId;
use crate::storage::sqlite::{ReadPool, Synchronous, open_connection};
use crate::storage::worker::{Worker, WriteExecutor};
use crate::storage::{StorageError, StorageResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS thresholds (
    sensor_id      TEXT PRIMARY KEY,
    max            REAL,
    min            REAL,
    hysteresis     REAL NOT NULL,
    for_ms         INTEGER,
    stale_after_ms INTEGER
);
CREATE TABLE IF NOT EXISTS alerts (
    id          TEXT PRIMARY KEY,
    sensor_id   TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    threshold   REAL    NOT NULL,
    value       REAL    NOT NULL,
    peak        REAL    NOT NULL,
    readings    INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_by_start ON alerts (started_at);
CREATE TABLE IF NOT EXISTS sensor_progress (
    sensor_id TEXT PRIMARY KEY,
    last_ms   INTEGER NOT NULL
);
";

fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

const ALERT_COLUMNS: &str =
    "id, sensor_id, kind, threshold, value, peak, readings, state, started_at, resolved_at";

enum AlertWrite {
    PutThreshold(Threshold),
    RemoveThreshold(SensorId, Vec<Alert>),
    /// Alerts to upsert (pending ones included), evaluation progress, and
    /// ids of pending excursions that ended without firing.
    Record(Vec<Alert>, Vec<(SensorId, i64)>, Vec<String>),
}

struct AlertWriter;

impl AlertWriter {
    fn upsert_alerts(tx: &Transaction<'_>, alerts: &[Alert]) -> StorageResult<()> {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO alerts ({ALERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))?;
        for a in alerts {
            let state = state_name(a.state);
            stmt.execute(params![
                a.id,
                a.sensor_id.as_str(),
                kind_name(a.kind),
                a.threshold,
                a.value,
                a.peak,
                a.readings as i64,
                state,
                a.started_at,
                a.resolved_at
            ])?;
        }
        Ok(())
    }
}

impl WriteExecutor for AlertWriter {
    type Op = AlertWrite;
    type Out = ();

    fn weight(op: &AlertWrite) -> usize {
        match op {
            AlertWrite::Record(alerts, progress, dropped) => {
                alerts.len() + progress.len() + dropped.len()
            }
            _ => 1,
        }
    }

    fn execute(&mut self, tx: &Transaction<'_>, op: &AlertWrite) -> StorageResult<()> {
        match op {
            AlertWrite::PutThreshold(t) => {
                tx.execute(
                    "INSERT OR REPLACE INTO thresholds (sensor_id, max, min, hysteresis, for_ms, stale_after_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![t.sensor_id.as_str(), t.max, t.min, t.hysteresis, t.for_ms, t.stale_after_ms],
                )?;
            }
            AlertWrite::RemoveThreshold(sensor, resolved) => {
                tx.execute(
                    "DELETE FROM thresholds WHERE sensor_id = ?1",
                    [sensor.as_str()],
                )?;
                tx.execute(
                    "DELETE FROM alerts WHERE sensor_id = ?1 AND state = 'pending'",
                    [sensor.as_str()],
                )?;
                Self::upsert_alerts(tx, resolved)?;
            }
            AlertWrite::Record(alerts, progress, dropped) => {
                Self::upsert_alerts(tx, alerts)?;
                let mut delete =
                    tx.prepare_cached("DELETE FROM alerts WHERE id = ?1 AND state = 'pending'")?;
                for id in dropped {
                    delete.execute([id])?;
                }
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO sensor_progress (sensor_id, last_ms) VALUES (?1, ?2)
                     ON CONFLICT (sensor_id) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
                )?;
                for (sensor, last) in progress {
                    stmt.execute(params![sensor.as_str(), last])?;
                }
            }
        }
        Ok(())
    }
}

pub(super) struct AlertStore {
    writer: Worker<AlertWriter>,
    readers: Arc<ReadPool>,
}

fn sensor(text: &str) -> StorageResult<SensorId> {
    text.parse()
        .map_err(|e| StorageError::Corrupt(format!("sensor {text:?}: {e}")))
}

fn decode_alert(row: &Row<'_>) -> StorageResult<Alert> {
    let kind = match row.get_ref(2)?.as_str()? {
        "above" => AlertKind::Above,
        "below" => AlertKind::Below,
        "stale" => AlertKind::Stale,
        other => return Err(StorageError::Corrupt(format!("alert kind {other:?}"))),
    };
    let state = match row.get_ref(7)?.as_str()? {
        "firing" => AlertState::Firing,
        "resolved" => AlertState::Resolved,
        "pending" => AlertState::Pending,
        other => return Err(StorageError::Corrupt(format!("alert state {other:?}"))),
    };
    Ok(Alert {
        id: row.get(0)?,
        sensor_id: sensor(row.get_ref(1)?.as_str()?)?,
        kind,
        threshold: row.get(3)?,
        value: row.get(4)?,
        peak: row.get(5)?,
        readings: row.get::<_, i64>(6)? as u64,
        state,
        started_at: row.get(8)?,
        resolved_at: row.get(9)?,
    })
}

/// Stores made before `for` and `stale_after` existed lack their columns.
fn add_missing_threshold_columns(connection: &rusqlite::Connection) -> StorageResult<()> {
    let mut stmt = connection.prepare("SELECT name FROM pragma_table_info('thresholds')")?;
    let columns: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for column in ["for_ms", "stale_after_ms"] {
        if !columns.iter().any(|c| c == column) {
            connection.execute_batch(&format!(
                "ALTER TABLE thresholds ADD COLUMN {column} INTEGER"
            ))?;
        }
    }
    Ok(())
}

impl AlertStore {
    pub(super) fn open(dir: &Path, synchronous: Synchronous) -> StorageResult<Self> {
        crate::storage::ensure_dir(dir)?;
        let path = dir.join("alerts.sqlite3");
        let connection = open_connection(&path, synchronous)?;
        connection.execute_batch(SCHEMA)?;
        add_missing_threshold_columns(&connection)?;
        Ok(Self {
            writer: Worker::spawn("alerts".into(), connection, AlertWriter)?,
            readers: Arc::new(ReadPool::new(path)),
        })
    }

    pub(super) async fn put_threshold(&self, threshold: Threshold) -> StorageResult<()> {
        self.writer
            .submit(AlertWrite::PutThreshold(threshold))
            .await
    }

    pub(super) async fn remove_threshold(
        &self,
        sensor: SensorId,
        resolved: Vec<Alert>,
    ) -> StorageResult<()> {
        self.writer
            .submit(AlertWrite::RemoveThreshold(sensor, resolved))
            .await
    }

    pub(super) async fn record(
        &self,
        alerts: Vec<Alert>,
        progress: Vec<(SensorId, i64)>,
        dropped: Vec<String>,
    ) -> StorageResult<()> {
        if alerts.is_empty() && progress.is_empty() && dropped.is_empty() {
            return Ok(());
        }
        self.writer
            .submit(AlertWrite::Record(alerts, progress, dropped))
            .await
    }

    pub(super) async fn thresholds(&self) -> StorageResult<Vec<Threshold>> {
        self.readers
            .read(|c| {
                let mut stmt =
                    c.prepare("SELECT sensor_id, max, min, hysteresis, for_ms, stale_after_ms FROM thresholds")?;
                let mut rows = stmt.query([])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(Threshold {
                        sensor_id: sensor(row.get_ref(0)?.as_str()?)?,
                        max: row.get(1)?,
                        min: row.get(2)?,
                        hysteresis: row.get(3)?,
                        for_ms: row.get(4)?,
                        stale_after_ms: row.get(5)?,
                    });
                }
                Ok(out)
            })
            .await
    }

    pub(super) async fn progress(&self) -> StorageResult<Vec<(SensorId, i64)>> {
        self.readers
            .read(|c| {
                let mut stmt = c.prepare("SELECT sensor_id, last_ms FROM sensor_progress")?;
                let mut rows = stmt.query([])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push((sensor(row.get_ref(0)?.as_str()?)?, row.get(1)?));
                }
                Ok(out)
            })
            .await
    }

    /// Episodes still open (firing) and excursions waiting for `for`.
    pub(super) async fn unresolved(&self) -> StorageResult<Vec<Alert>> {
        let mut open = Vec::new();
        for state in [AlertState::Firing, AlertState::Pending] {
            open.extend(
                self.alerts(AlertQuery {
                    state: Some(state),
                    limit: usize::MAX,
                    ..AlertQuery::default()
                })
                .await?,
            );
        }
        Ok(open)
    }

    pub(super) async fn alerts(&self, query: AlertQuery) -> StorageResult<Vec<Alert>> {
        self.readers
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts
                     WHERE (?1 IS NULL OR sensor_id = ?1)
                       AND ((?2 IS NULL AND state != 'pending') OR state = ?2)
                       AND (?3 IS NULL OR resolved_at IS NULL OR resolved_at >= ?3)
                     ORDER BY started_at DESC, id DESC LIMIT ?4"
                ))?;
                let state = query.state.map(state_name);
                let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
                let mut rows = stmt.query(params![
                    query.sensor_id.as_ref().map(SensorId::as_str),
                    state,
                    query.since_ms,
                    limit
                ])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(decode_alert(row)?);
                }
                Ok(out)
            })
            .await
    }

    pub(super) async fn close(&self) {
        self.writer.close().await;
        self.readers.clear();
    }
}
