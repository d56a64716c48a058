//! Durability against `kill -9`: a child process writes batches through a
//! replicator on real SQLite files and reports each batch once it is
//! acknowledged; the parent kills it with SIGKILL at a random moment, reopens
//! the same files and checks that every acknowledged reading is there. Three
//! rounds, each restarting on the files the last one left.
//!
//! This file has its own `main` (`harness = false` in Cargo.toml): run
//! without arguments it is the parent; with `CRASH_CHILD_DIR` set it is the
//! writer.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use energyguard::reading::Key;
use energyguard::replication::StrategyKind;
use energyguard::storage::Scan;

const WRITERS: usize = 4;
const ROUNDS: usize = 3;
/// The child stops by itself after this long if nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match std::env::var("CRASH_CHILD_DIR") {
        Ok(dir) => runtime.block_on(child(Path::new(&dir))),
        Err(_) => runtime.block_on(parent()),
    }
}

/// Each writer's readings alternate between two sensors, so that a batch of
/// more than one is written through the storage nodes' journal.
fn sensor_of(writer: usize, ts: i64) -> String {
    format!("w{writer}-{}", ts % 2)
}

/// Writes batches of growing timestamps from several tasks at once (so group
/// commit shares transactions) and prints `<writer> <first ts> <last ts>`
/// after each acknowledged batch.
async fn child(dir: &Path) {
    let replicator = sqlite_cluster(dir, 3, settings(StrategyKind::Consistent, 2, 2)).await;
    let start_ts: i64 = std::env::var("CRASH_START_TS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let replicator = replicator.clone();
        tasks.push(tokio::spawn(async move {
            let mut ts = start_ts;
            let mut size = 1;
            while started.elapsed() < CHILD_LIFETIME {
                let batch: Vec<_> = (ts..ts + size)
                    .map(|t| reading(&sensor_of(writer, t), t, t as f64))
                    .collect();
                replicator.put(batch).await.expect("put");
                let mut out = std::io::stdout().lock();
                writeln!(out, "{writer} {ts} {}", ts + size - 1).expect("stdout");
                out.flush().expect("stdout");
                ts += size;
                size = size % 400 + 37;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
}

async fn parent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acknowledged: BTreeSet<Key> = BTreeSet::new();
    let mut next_ts = 0;
    let mut journal_left = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env("CRASH_CHILD_DIR", dir.path())
            .env("CRASH_START_TS", next_ts.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        // Kill after a different number of acknowledged batches each round.
        let kill_after = 150 + round * 97;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while let Some(Ok(line)) = lines.next() {
            let fields: Vec<i64> = line
                .split(' ')
                .map(|f| f.parse().expect("number"))
                .collect();
            for ts in fields[1]..=fields[2] {
                acknowledged.insert(key(&sensor_of(fields[0] as usize, ts), ts));
                next_ts = next_ts.max(ts + 1);
            }
            seen += 1;
            if seen == kill_after {
                child.kill().expect("SIGKILL the child");
            }
        }
        child.wait().expect("reap child");
        assert!(
            seen >= kill_after,
            "round {round}: the child stopped early after {seen} batches"
        );

        journal_left += journal_rows(dir.path());
        // Lines still in the pipe after the kill were acknowledged too: all of
        // them are counted above, and all must be on disk.
        let replicator =
            sqlite_cluster(dir.path(), 3, settings(StrategyKind::Consistent, 2, 2)).await;
        let mut stored = BTreeSet::new();
        for name in (0..WRITERS).flat_map(|w| [sensor_of(w, 0), sensor_of(w, 1)]) {
            let scan = Scan {
                sensor: Some(sensor(&name)),
                limit: usize::MAX,
                ..Scan::default()
            };
            stored.extend(
                replicator
                    .scan(scan)
                    .await
                    .expect("scan")
                    .into_iter()
                    .map(|r| r.key),
            );
        }
        let missing: Vec<_> = acknowledged.difference(&stored).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged but lost: {missing:?}"
        );
        // Both replicas of every reading hold it (write quorum 2).
        let copies: u64 = replicator
            .node_reports()
            .await
            .iter()
            .map(|n| n.keys.expect("keys"))
            .sum();
        assert!(
            copies >= 2 * acknowledged.len() as u64,
            "round {round}: {copies} copies"
        );
        replicator.close().await;
        println!(
            "crash round {round}: killed after {seen} batches; {} acknowledged readings all stored",
            acknowledged.len()
        );
    }
    // The kills caught journals not yet merged: the reopen merged them.
    assert!(journal_left > 0, "no kill left a journal to merge");
    println!("journaled readings left by the kills and merged at reopen: {journal_left}");
    println!("1 passed, 0 failed");
}

/// Rows in the journals of the storage node files in `dir`.
fn journal_rows(dir: &Path) -> i64 {
    (1..=3)
        .map(|n| {
            let file = dir.join(format!("node{n}.sqlite3"));
            let db = rusqlite::Connection::open(&file).expect("open node file");
            db.query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))
                .expect("count journal")
        })
        .sum()
}
