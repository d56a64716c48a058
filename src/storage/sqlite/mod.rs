//! The SQLite storage node: one database file per node under `data_dir`.
//!
//! Writes go through the node's group-commit writer thread (`worker.rs`,
//! with what it does in `writer.rs`: small writes via a journal); reads run
//! on a small pool of read-only connections on the blocking pool, which WAL
//! mode lets proceed while the writer commits. Records live in one
//! `WITHOUT ROWID` table keyed by `(sensor, ts)`, so one sensor's history is a
//! contiguous range of the primary key. A tombstone is a row whose `value` is
//! NULL (a stored value is always a finite number). Whole-sensor digests are
//! cached between recoveries (`digest_cache.rs`).

mod digest_cache;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde::Deserialize;

use super::digest::{DAY_MS, DigestBuilder};
use super::worker::Worker;
use super::{
    DigestRequest, Incarnation, NodeId, NodeStats, RangeDigest, Record, Scan, StorageError,
    StorageNode, StorageResult,
};
use crate::reading::{Key, Sample, SensorId, Unit};
use crate::version::Version;
use digest_cache::{DigestCache, Refresh};
use writer::{JOURNAL_SCHEMA, NodeWrite, NodeWriter, Pending, UPSERT_CHUNK};

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Durable against a crash of the process (`kill -9`); a power loss may
    /// lose the last transactions. Fastest.
    Normal,
    /// Durable against power loss too: an fsync per commit.
    #[default]
    Full,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS readings (
    sensor  TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value   REAL,
    unit    TEXT,
    PRIMARY KEY (sensor, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incarnation (
    id TEXT NOT NULL
);
";

/// SQLite's unix VFS variant for a database that one process owns. The
/// first connection takes an exclusive POSIX lock on the file and holds it
/// while any connection of this process has the file open; from then on
/// connections of this process coordinate in memory (the WAL index lives on
/// the heap) instead of making two `fcntl` calls on the `-shm` file for
/// every read transaction. Another process (a second `energyguard` on the same data
/// directory, the `sqlite3` shell) is refused while the service runs.
const OWNED_BY_THIS_PROCESS: &str = "unix-excl";

/// Opens (creating if needed) a database in WAL mode with the given durability.
pub(crate) fn open_connection(path: &Path, synchronous: Synchronous) -> StorageResult<Connection> {
    let connection = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        OWNED_BY_THIS_PROCESS,
    )?;
    claim(&connection, path)?;
    configure(&connection)?;
    let sync = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", sync)?;
    // Checkpoint every ~40 MiB of WAL instead of every 4 MiB: hot pages
    // (the tail of each sensor's range) are copied back far less often.
    connection.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    Ok(connection)
}

/// Takes this process's lock on the file at once (the first read does), so
/// a file held by another process is reported as such instead of after the
/// busy timeout as "database is locked".
fn claim(connection: &Connection, path: &Path) -> StorageResult<()> {
    connection.busy_timeout(std::time::Duration::ZERO)?;
    match connection.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Err(StorageError::InUse {
                path: path.display().to_string(),
            })
        }
        other => Ok(other?),
    }
}

fn configure(connection: &Connection) -> StorageResult<()> {
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    connection.pragma_update(None, "cache_size", -32_768)?;
    Ok(())
}

/// Read-only connections, reused across reads: at most [`MAX_READERS`]
/// open at once, each with its own page cache, so however many requests
/// read at once, the memory they pin is bounded; a read beyond that waits
/// for a connection.
///
/// A `std::sync::Mutex` guards the idle list: it is held only to push or pop
/// a connection, never across a query or an await.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection that may be in use.
    open: Arc<Semaphore>,
}

/// Read connections per node at most.
const MAX_READERS: usize = 8;

impl ReadPool {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            open: Arc::new(Semaphore::new(MAX_READERS)),
        }
    }

    /// Runs `read` on a pooled connection on the blocking thread pool.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, read: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let permit = self.permit().await?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.read_now(read)
        })
        .await
        .map_err(|_| StorageError::Closed)?
    }

    /// Runs a *bounded* read (a primary-key lookup: a few pages) on the
    /// calling async worker: blocking it that briefly costs less than the two
    /// thread hand-offs of [`Self::read`]. Anything that can touch many rows
    /// must use `read`.
    pub(crate) async fn read_small<T>(
        &self,
        read: impl FnOnce(&Connection) -> StorageResult<T>,
    ) -> StorageResult<T> {
        let _permit = self.permit().await?;
        self.read_now(read)
    }

    /// A connection's permit if one is free now.
    fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    async fn permit(&self) -> StorageResult<OwnedSemaphorePermit> {
        self.open
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Runs `read` on an idle connection, or a new one; the caller holds a
    /// permit.
    fn read_now<T>(&self, read: impl FnOnce(&Connection) -> StorageResult<T>) -> StorageResult<T> {
        let connection = self.take()?;
        let result = read(&connection);
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection);
        result
    }

    fn take(&self) -> StorageResult<Connection> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        // Read-write as far as the VFS knows (a read-only file would bypass
        // the in-memory locking of `OWNED_BY_THIS_PROCESS`), refused any
        // write by `query_only`.
        let connection = Connection::open_with_flags_and_vfs(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            OWNED_BY_THIS_PROCESS,
        )?;
        configure(&connection)?;
        connection.pragma_update(None, "query_only", true)?;
        Ok(connection)
    }

    pub(crate) fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A storage node backed by one SQLite database file.
pub struct SqliteNode {
    id: NodeId,
    /// The database file.
    path: PathBuf,
    incarnation: Incarnation,
    writer: Worker<NodeWriter>,
    readers: Arc<ReadPool>,
    /// Journaled records not yet in `readings` (see `writer.rs`).
    pending: Arc<Pending>,
    digests: Arc<DigestCache>,
}

impl SqliteNode {
    /// Opens (or creates) `<dir>/<id>.sqlite3`.
    pub fn open(id: NodeId, dir: &Path, synchronous: Synchronous) -> StorageResult<Self> {
        crate::storage::ensure_dir(dir)?;
        let path = dir.join(format!("{id}.sqlite3"));
        let mut connection = open_connection(&path, synchronous)?;
        connection.execute_batch(SCHEMA)?;
        connection.execute_batch(JOURNAL_SCHEMA)?;
        let incarnation = incarnation(&connection)?;
        // One prepared statement per chunk length (1..=UPSERT_CHUNK) of the
        // upsert and of the journal append stays cached: with rusqlite's
        // default of 16, small group commits of varying size re-parsed a
        // many-row statement on most commits.
        connection.set_prepared_statement_cache_capacity(2 * UPSERT_CHUNK + 8);
        let pending = Arc::new(Pending::default());
        let digests = Arc::new(DigestCache::default());
        let executor = NodeWriter::open(&mut connection, pending.clone(), digests.clone())?;
        let writer = Worker::spawn(format!("store-{id}"), connection, executor)?;
        Ok(Self {
            id,
            incarnation,
            writer,
            readers: Arc::new(ReadPool::new(path.clone())),
            path,
            pending,
            digests,
        })
    }

    /// The incarnation of this database, made with it.
    pub fn incarnation(&self) -> &Incarnation {
        &self.incarnation
    }

    /// Merges the journal into `readings`, so that a read of `readings`
    /// sees every write acknowledged so far.
    async fn merge_journal(&self) -> StorageResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.writer.submit(NodeWrite::Merge).await.map(|_| ())
    }

    /// The digests each request asks for, each over its whole sensor or
    /// only over `[from, to)` ms, read from `readings` (the journal merged)
    /// in one trip to the blocking pool.
    async fn compute_digests(
        &self,
        requests: Vec<(DigestRequest, Option<(i64, i64)>)>,
    ) -> StorageResult<Vec<RangeDigest>> {
        self.readers
            .read(move |c| {
                let mut out = Vec::new();
                for (request, range) in &requests {
                    out.extend(digests_from_rows(c, request, *range)?);
                }
                Ok(out)
            })
            .await
    }
}

/// The database's incarnation, made with it.
fn incarnation(connection: &Connection) -> StorageResult<Incarnation> {
    let stored: Option<String> = connection
        .query_row("SELECT id FROM incarnation", [], |r| r.get(0))
        .optional()?;
    if let Some(id) = stored {
        return Ok(Incarnation(id));
    }
    let made = Incarnation::new();
    connection.execute("INSERT INTO incarnation (id) VALUES (?1)", [&made.0])?;
    Ok(made)
}

/// Reads the rows `request` covers from `readings` (only those in
/// `[from, to)` ms of its sensor when `range` is given) and digests them.
fn digests_from_rows(
    c: &Connection,
    request: &DigestRequest,
    range: Option<(i64, i64)>,
) -> StorageResult<Vec<RangeDigest>> {
    let mut builder = DigestBuilder::new(request);
    let base = "SELECT sensor, ts, version, value IS NULL FROM readings";
    let mut stmt;
    let mut rows = match (&request.sensor, range) {
        (Some(s), Some((from, to))) => {
            stmt = c.prepare_cached(&format!(
                "{base} WHERE sensor = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY sensor, ts"
            ))?;
            stmt.query(rusqlite::params![s.as_str(), from, to])?
        }
        (Some(s), None) => {
            stmt = c.prepare_cached(&format!("{base} WHERE sensor = ?1 ORDER BY sensor, ts"))?;
            stmt.query([s.as_str()])?
        }
        (None, _) => {
            stmt = c.prepare_cached(&format!("{base} ORDER BY sensor, ts"))?;
            stmt.query([])?
        }
    };
    let mut decoder = RecordDecoder::new();
    while let Some(row) = rows.next()? {
        let sensor = decoder.sensor(row)?;
        let version = Version(row.get_ref(2)?.as_i64()? as u64);
        let tombstone = row.get_ref(3)?.as_i64()? != 0;
        builder.push(&sensor, row.get_ref(1)?.as_i64()?, version, tombstone);
    }
    Ok(builder.finish())
}

/// Turns rows in key order into records, sharing one `SensorId` per run of
/// rows of the same sensor instead of allocating one per row.
pub(crate) struct RecordDecoder {
    last_sensor: Option<SensorId>,
    /// The unit of the previous row: a sensor's rows nearly always share one.
    last_unit: Option<Unit>,
}

impl RecordDecoder {
    pub(crate) fn new() -> Self {
        Self::for_sensor(None)
    }

    /// A decoder that already knows the sensor of the first row.
    fn for_sensor(sensor: Option<SensorId>) -> Self {
        Self {
            last_sensor: sensor,
            last_unit: None,
        }
    }

    /// The sensor in column 0.
    fn sensor(&mut self, row: &Row<'_>) -> StorageResult<SensorId> {
        // Rows come in key order: compare bytes with the previous row's
        // sensor, and validate and allocate only when it changes.
        let bytes = row.get_ref(0)?.as_bytes()?;
        match &self.last_sensor {
            Some(s) if s.as_str().as_bytes() == bytes => Ok(s.clone()),
            _ => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| StorageError::Corrupt(format!("sensor: {e}")))?;
                let s: SensorId = text
                    .parse()
                    .map_err(|e| StorageError::Corrupt(format!("sensor {text:?}: {e}")))?;
                self.last_sensor = Some(s.clone());
                Ok(s)
            }
        }
    }

    /// A unit, parsed (and allocated) only when it differs from the last.
    fn unit(&mut self, text: &str) -> StorageResult<Unit> {
        match &self.last_unit {
            Some(u) if u.as_str() == text => Ok(u.clone()),
            _ => {
                let u: Unit = text
                    .parse()
                    .map_err(|e| StorageError::Corrupt(format!("unit: {e}")))?;
                self.last_unit = Some(u.clone());
                Ok(u)
            }
        }
    }

    /// Columns: sensor, ts, version, value, unit.
    pub(crate) fn decode(&mut self, row: &Row<'_>) -> StorageResult<Record> {
        let sensor = self.sensor(row)?;
        let timestamp_ms: i64 = row.get(1)?;
        let version = Version(row.get::<_, i64>(2)? as u64);
        let value: Option<f64> = row.get(3)?;
        let unit = match row.get_ref(4)?.as_str_or_null()? {
            None => None,
            Some(text) => Some(self.unit(text)?),
        };
        Ok(Record {
            key: Key::new(sensor, timestamp_ms),
            version,
            sample: value.map(|value| Sample { value, unit }),
        })
    }
}

const COLUMNS: &str = "sensor, ts, version, value, unit";
const GET: &str =
    "SELECT sensor, ts, version, value, unit FROM readings WHERE sensor = ?1 AND ts = ?2";

fn scan_sql(scan: &Scan) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    if let Some(s) = &scan.sensor {
        conditions.push("sensor = ?".to_string());
        args.push(V::Text(s.as_str().to_string()));
    }
    if let Some(from) = scan.from_ms {
        conditions.push("ts >= ?".to_string());
        args.push(V::Integer(from));
    }
    if let Some(to) = scan.to_ms {
        conditions.push("ts < ?".to_string());
        args.push(V::Integer(to));
    }
    match (&scan.after, &scan.sensor) {
        (None, _) => {}
        (Some(after), None) => {
            conditions.push("(sensor, ts) > (?, ?)".to_string());
            args.push(V::Text(after.sensor.as_str().to_string()));
            args.push(V::Integer(after.timestamp_ms));
        }
        // With `sensor = ?` SQLite does not seek on a row value: it would
        // walk the sensor's range from its start to each page's first row.
        (Some(after), Some(sensor)) => match after.sensor.cmp(sensor) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                conditions.push("ts > ?".to_string());
                args.push(V::Integer(after.timestamp_ms));
            }
            std::cmp::Ordering::Greater => conditions.push("0".to_string()),
        },
    }
    if !scan.tombstones {
        conditions.push("value IS NOT NULL".to_string());
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let limit = i64::try_from(scan.limit).unwrap_or(i64::MAX);
    args.push(V::Integer(limit));
    (
        format!("SELECT {COLUMNS} FROM readings {filter} ORDER BY sensor, ts LIMIT ?"),
        args,
    )
}

#[async_trait]
impl StorageNode for SqliteNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    async fn apply(&self, records: Vec<Record>) -> StorageResult<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        self.writer.submit(NodeWrite::Apply(records)).await
    }

    async fn get(&self, key: &Key) -> StorageResult<Option<Record>> {
        // The journal first: a record merged away from it in between is in
        // `readings` by the time `readings` is read.
        let journaled = self.pending.get(key);
        let stored = self
            .readers
            .read_small(|c| {
                let mut stmt = c.prepare_cached(GET)?;
                let mut rows = stmt.query(params![key.sensor.as_str(), key.timestamp_ms])?;
                // The key is known: seed the decoder with its sensor instead of
                // parsing the stored text again.
                let mut decoder = RecordDecoder::for_sensor(Some(key.sensor.clone()));
                rows.next()?.map(|row| decoder.decode(row)).transpose()
            })
            .await?;
        Ok(match (journaled, stored) {
            (Some(a), Some(b)) => Some(Record::newest(a, b)),
            (a, b) => a.or(b),
        })
    }

    async fn scan(&self, scan: Scan) -> StorageResult<Vec<Record>> {
        self.merge_journal().await?;
        self.readers
            .read(move |c| {
                let (sql, args) = scan_sql(&scan);
                let mut stmt = c.prepare_cached(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                let mut decoder = RecordDecoder::new();
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(decoder.decode(row)?);
                }
                Ok(out)
            })
            .await
    }

    async fn digests(&self, request: DigestRequest) -> StorageResult<Vec<RangeDigest>> {
        self.merge_journal().await?;
        if request.sensor.is_some() || request.bucket_ms.is_some() {
            return self.compute_digests(vec![(request, None)]).await;
        }
        self.digests
            .all(|refresh| {
                let days_of = |sensor| DigestRequest {
                    sensor,
                    bucket_ms: Some(DAY_MS),
                };
                let requests = match refresh {
                    Refresh::All => vec![(days_of(None), None)],
                    Refresh::Sensors(sensors) => sensors
                        .into_iter()
                        .map(|sensor| (days_of(Some(sensor)), None))
                        .collect(),
                    Refresh::Days(days) => days
                        .into_iter()
                        .map(|(sensor, day)| (days_of(Some(sensor)), Some((day, day + DAY_MS))))
                        .collect(),
                };
                self.compute_digests(requests)
            })
            .await
    }

    async fn remove_sensors(&self, sensors: Vec<SensorId>) -> StorageResult<u64> {
        if sensors.is_empty() {
            return Ok(0);
        }
        self.writer.submit(NodeWrite::RemoveSensors(sensors)).await
    }

    async fn stats(&self) -> StorageResult<NodeStats> {
        self.merge_journal().await?;
        self.readers
            .read(|c| {
                let (live, dead, max): (i64, i64, Option<i64>) = c.query_row(
                    "SELECT count(value), count(*) - count(value), max(version) FROM readings",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                Ok(NodeStats {
                    live_keys: live as u64,
                    tombstones: dead as u64,
                    max_version: Version(max.unwrap_or(0) as u64),
                })
            })
            .await
    }

    async fn close(&self) -> StorageResult<()> {
        self.writer.close().await;
        self.readers.clear();
        Ok(())
    }

    fn address(&self) -> String {
        self.path
            .parent()
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }

    async fn probe(&self) -> StorageResult<Incarnation> {
        // A page of the file, read through the pool: fails when the file or
        // its disk does. Every connection busy means reads are being
        // answered, which is answer enough.
        if let Some(permit) = self.readers.try_permit() {
            let _permit = permit;
            self.readers.read_now(|c| {
                Ok(c.query_row("SELECT count(*) FROM incarnation", [], |_| Ok(()))?)
            })?;
        }
        Ok(self.incarnation.clone())
    }
}
