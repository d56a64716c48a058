//! Group commit: one writer thread per SQLite database.
//!
//! `rusqlite::Connection` is `Send` but not `Sync` and a transaction needs
//! `&mut`, so each database's write connection lives on a dedicated OS thread
//! (never on the async runtime, whose threads must not block on fsync).
//! Writers from any task send their operation over a channel and await a
//! one-shot reply. The thread takes everything queued, runs it in *one*
//! transaction, commits once, then answers everyone: concurrent writers share
//! the commit, so throughput does not collapse to one fsync per write.
//!
//! The channel is unbounded, and needs no bound of its own: every job in it
//! has a caller awaiting its reply, and callers are bounded upstream (the
//! ingestor's queue, HTTP's connection cap, the replicator's paged repairs).
//!
//! If any operation of a shared transaction fails, the transaction is rolled
//! back and each operation is retried alone, so one bad operation cannot fail
//! its neighbours.
//!
//! An executor may also have chores of its own (the storage node merges its
//! journal): the thread runs them in transactions of their own, at once when
//! they are due, in the gaps between writes, or once no write has arrived
//! for [`IDLE`], and a last time when the worker closes.

use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

use super::{StorageError, StorageResult};

/// Stop collecting more operations into one transaction past this weight
/// (records, roughly): bounds the latency a huge queue adds to the first job.
const MAX_BATCH_WEIGHT: usize = 50_000;

/// How long the queue must stay empty before a chore that can wait runs.
const IDLE: Duration = Duration::from_millis(50);

/// The longest wait between tries of a chore that keeps failing.
const MAX_CHORE_BACKOFF: Duration = Duration::from_secs(5);

/// When an executor's chore should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chore {
    /// Before the next write.
    Now,
    /// Whenever no write is waiting: a chore done in slices, each short
    /// enough that a write arriving meanwhile waits little.
    BetweenWrites,
    /// Once no write has arrived for [`IDLE`].
    WhenIdle,
}

/// What the writer thread does with one operation, inside a transaction.
pub(crate) trait WriteExecutor: Send + 'static {
    type Op: Send + 'static;
    type Out: Send + 'static;

    /// How much work `op` is (e.g. its record count), for batch sizing.
    fn weight(op: &Self::Op) -> usize;

    fn execute(&mut self, tx: &Transaction<'_>, op: &Self::Op) -> StorageResult<Self::Out>;

    /// The transaction of the operations executed since the last call of
    /// `committed` or `rolled_back` has committed.
    fn committed(&mut self) {}

    /// That transaction was rolled back instead.
    fn rolled_back(&mut self) {}

    /// An operation of the executor's own, and when to run it.
    fn chore(&self) -> Option<(Chore, Self::Op)> {
        None
    }
}

struct Job<E: WriteExecutor> {
    op: E::Op,
    reply: oneshot::Sender<StorageResult<E::Out>>,
}

/// The handle through which async code submits writes.
pub(crate) struct Worker<E: WriteExecutor> {
    sender: Mutex<Option<mpsc::Sender<Job<E>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<E: WriteExecutor> Worker<E> {
    pub(crate) fn spawn(name: String, connection: Connection, executor: E) -> StorageResult<Self> {
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(connection, executor, receiver))
            .map_err(|source| StorageError::Io { path: name, source })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `op` and waits until its transaction has committed.
    pub(crate) async fn submit(&self, op: E::Op) -> StorageResult<E::Out> {
        let (reply, answer) = oneshot::channel();
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StorageError::Closed)?;
        sender
            .send(Job { op, reply })
            .map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Lets queued writes finish, then stops the thread.
    pub(crate) async fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            // Joining blocks until the last transaction commits: not on the runtime.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn run<E: WriteExecutor>(
    mut connection: Connection,
    mut executor: E,
    receiver: mpsc::Receiver<Job<E>>,
) {
    while let Some(first) = next_job(&mut connection, &mut executor, &receiver) {
        let mut weight = E::weight(&first.op);
        let mut jobs = vec![first];
        while weight < MAX_BATCH_WEIGHT {
            match receiver.try_recv() {
                Ok(job) => {
                    weight += E::weight(&job.op);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let results = match execute_together(&mut connection, &mut executor, &jobs) {
            Ok(outs) => outs.into_iter().map(Ok).collect(),
            Err(_) if jobs.len() > 1 => jobs
                .iter()
                .map(|job| {
                    execute_together(&mut connection, &mut executor, std::slice::from_ref(job))
                        .map(|mut o| o.remove(0))
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        for (job, result) in jobs.into_iter().zip(results) {
            // The submitter may have gone away (cancelled); the write stands.
            let _ = job.reply.send(result);
        }
        if let Some((Chore::Now, op)) = executor.chore() {
            run_chore(&mut connection, &mut executor, op);
        }
    }
    if let Some((_, op)) = executor.chore() {
        run_chore(&mut connection, &mut executor, op);
    }
}

/// Waits for the next job, running chores meanwhile: one done between
/// writes whenever the queue is empty, one that can wait whenever the queue
/// stays empty for [`IDLE`]. After a chore fails, the next try waits longer
/// each time, up to [`MAX_CHORE_BACKOFF`]. `None` once the worker is closed.
fn next_job<E: WriteExecutor>(
    connection: &mut Connection,
    executor: &mut E,
    receiver: &mpsc::Receiver<Job<E>>,
) -> Option<Job<E>> {
    let mut wait = IDLE;
    loop {
        let Some((when, op)) = executor.chore() else {
            return receiver.recv().ok();
        };
        // A chore that keeps failing waits for its turn like one that can.
        let at_once = when != Chore::WhenIdle && wait == IDLE;
        let next = if at_once {
            receiver.try_recv().map_err(|error| match error {
                mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            receiver.recv_timeout(wait)
        };
        match next {
            Ok(job) => return Some(job),
            Err(RecvTimeoutError::Timeout) => {
                wait = if run_chore(connection, executor, op) {
                    IDLE
                } else {
                    (wait * 2).min(MAX_CHORE_BACKOFF)
                };
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Runs a chore in a transaction of its own; answers whether it succeeded.
/// A failed chore is logged and left to its next turn (the executor's state
/// is as before it).
fn run_chore<E: WriteExecutor>(connection: &mut Connection, executor: &mut E, op: E::Op) -> bool {
    let (reply, _) = oneshot::channel();
    match execute_together(connection, executor, &[Job { op, reply }]) {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "storage chore failed; it is tried again later");
            false
        }
    }
}

fn execute_together<E: WriteExecutor>(
    connection: &mut Connection,
    executor: &mut E,
    jobs: &[Job<E>],
) -> StorageResult<Vec<E::Out>> {
    let result = (|| {
        let tx = connection.transaction()?;
        let outs = jobs
            .iter()
            .map(|job| executor.execute(&tx, &job.op))
            .collect::<StorageResult<Vec<_>>>()?;
        tx.commit()?;
        Ok(outs)
    })();
    match &result {
        Ok(_) => executor.committed(),
        Err(_) => executor.rolled_back(),
    }
    result
}
