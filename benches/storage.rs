//! Micro-benchmarks of the storage core's hot paths. Run with
//! `cargo bench --bench storage`; medians are in `target/criterion`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use energyguard::reading::{Key, Reading, Sample, SensorId};
use energyguard::replication::ring::HashRing;
use energyguard::replication::{PlacementSpec, ReplicationSettings, Replicator, StrategyKind};
use energyguard::storage::sqlite::{SqliteNode, Synchronous};
use energyguard::storage::{NodeId, Record, StorageNode};
use energyguard::version::Version;

const BATCH: i64 = 5_000;
/// The embedded broker's window of unacknowledged MQTT messages.
const SMALL_BATCH: i64 = 100;
const SENSORS: i64 = 100;

fn nodes(n: usize) -> Vec<NodeId> {
    (1..=n)
        .map(|i| format!("node{i}").parse().expect("valid"))
        .collect()
}

fn sensors() -> Vec<SensorId> {
    (0..SENSORS)
        .map(|i| format!("sensor{i}").parse().expect("valid"))
        .collect()
}

/// A batch of `rows` new readings over `SENSORS` sensors, at timestamps
/// never used before in this process.
fn next_batch(clock: &AtomicI64, sensors: &[SensorId], rows: i64) -> Vec<Reading> {
    let base = clock.fetch_add(rows, Ordering::Relaxed);
    (0..rows)
        .map(|i| Reading {
            key: Key::new(sensors[(i % SENSORS) as usize].clone(), base + i),
            sample: Sample {
                value: i as f64,
                unit: None,
            },
        })
        .collect()
}

/// Guards placement cost: one lookup per sensor per write batch.
fn ring_lookup(c: &mut Criterion) {
    let ring = HashRing::new(&nodes(3), 64);
    let keys: Vec<String> = (0..1_000).map(|i| format!("sensor{i}")).collect();
    let mut group = c.benchmark_group("ring_lookup");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("3 nodes x 64 vnodes, rf 2", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| ring.preference_list(k.as_bytes(), 2).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

/// Guards the per-row cost of the SQLite node, for both durability levels,
/// in large commits (a batched HTTP request: upserts by version straight
/// into the sensor-ordered table) and small ones (one window of MQTT
/// messages, or a few concurrent single-reading requests: appended to the
/// journal, whose merges are part of the figure).
fn sqlite_batch_insert(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("sqlite_batch_insert");
    for (sync, rows) in [
        (Synchronous::Normal, BATCH),
        (Synchronous::Full, BATCH),
        (Synchronous::Full, SMALL_BATCH),
    ] {
        group.throughput(Throughput::Elements(rows as u64));
        let dir = tempfile::tempdir().expect("temp dir");
        let node = SqliteNode::open(nodes(1).remove(0), dir.path(), sync).expect("open");
        let clock = AtomicI64::new(0);
        let batches = AtomicU64::new(0);
        let sensors = sensors();
        let name = format!("{sync:?}, {rows} rows");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&runtime).iter(|| {
                // Each batch newer than the last, as the service's clock
                // issues them.
                let version = Version(batches.fetch_add(1, Ordering::Relaxed) + 1);
                let records: Vec<Record> = next_batch(&clock, &sensors, rows)
                    .into_iter()
                    .map(|r| Record {
                        key: r.key,
                        version,
                        sample: Some(r.sample),
                    })
                    .collect();
                let node = &node;
                async move { node.apply(records).await.expect("apply") }
            })
        });
    }
    group.finish();
}

/// Guards the whole replicated write: placement, fan-out, group commit on
/// each node's own thread, quorum. 3 nodes, write quorum 1.
fn replicated_batch_write(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("replicated_batch_write");
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases = [
        ("full", StrategyKind::Full, 3, Synchronous::Normal),
        (
            "consistent rf2",
            StrategyKind::Consistent,
            2,
            Synchronous::Normal,
        ),
        (
            "consistent rf2 sync=full",
            StrategyKind::Consistent,
            2,
            Synchronous::Full,
        ),
    ];
    for (name, strategy, rf, sync) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = ReplicationSettings {
            strategy,
            replication_factor: rf,
            virtual_nodes: 64,
            write_quorum: 1,
        };
        let replicator: Arc<Replicator> = runtime
            .block_on(Replicator::open_sqlite(
                dir.path(),
                PlacementSpec {
                    settings,
                    nodes: nodes(3),
                },
                sync,
            ))
            .expect("open");
        let clock = AtomicI64::new(0);
        let sensors = sensors();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&runtime).iter(|| {
                let batch = next_batch(&clock, &sensors, BATCH);
                let replicator = &replicator;
                async move { replicator.put(batch).await.expect("put") }
            })
        });
        if name == "consistent rf2" {
            // A loaded server has several batches in flight (HTTP clients, the
            // MQTT consumer): group commit then keeps both cores busy.
            group.throughput(Throughput::Elements(2 * BATCH as u64));
            group.bench_function(
                BenchmarkId::from_parameter("consistent rf2, 2 batches in flight"),
                |b| {
                    b.to_async(&runtime).iter(|| {
                        let (first, second) = (
                            next_batch(&clock, &sensors, BATCH),
                            next_batch(&clock, &sensors, BATCH),
                        );
                        let replicator = &replicator;
                        async move {
                            let (a, b) =
                                futures::join!(replicator.put(first), replicator.put(second));
                            a.and(b).expect("put")
                        }
                    })
                },
            );
            group.throughput(Throughput::Elements(BATCH as u64));
        }
        runtime.block_on(replicator.close());
    }
    group.finish();
}

criterion_group!(
    benches,
    ring_lookup,
    sqlite_batch_insert,
    replicated_batch_write
);
criterion_main!(benches);
