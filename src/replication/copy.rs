//! Copying a sensor's records from one node to another: whole, or only the
//! hour buckets whose digests differ. Records merge by version on arrival,
//! so copying too much is harmless and a tombstone beats an older value;
//! recovery (repair) and rebalancing (moves) both copy this way.

use std::collections::HashMap;

use super::ReplicationResult;
use crate::reading::SensorId;
use crate::storage::{DigestRequest, Pages, Scan, StorageNode};

/// Records copied per round trip.
const COPY_PAGE: usize = 50_000;
/// Width of the time buckets a mismatching sensor is compared in.
const REPAIR_BUCKET_MS: i64 = 3_600_000;

/// Compares `sensor` bucket by bucket and copies the buckets where `source`
/// differs from `target`. Answers records changed on `target`.
pub(super) async fn copy_differing_buckets(
    source: &dyn StorageNode,
    target: &dyn StorageNode,
    sensor: &SensorId,
) -> ReplicationResult<u64> {
    let request = DigestRequest {
        sensor: Some(sensor.clone()),
        bucket_ms: Some(REPAIR_BUCKET_MS),
    };
    let target_buckets: HashMap<Option<i64>, (u64, u64)> = target
        .digests(request.clone())
        .await?
        .into_iter()
        .map(|d| (d.bucket_start_ms, (d.count, d.hash)))
        .collect();
    let mut changed = 0;
    for bucket in source.digests(request).await? {
        if target_buckets.get(&bucket.bucket_start_ms) == Some(&(bucket.count, bucket.hash)) {
            continue;
        }
        let from = bucket.bucket_start_ms;
        let to = from.map(|f| f + REPAIR_BUCKET_MS);
        changed += copy_range(source, target, sensor, from, to).await?;
    }
    Ok(changed)
}

/// Copies every record (tombstones included) of `sensor` in `[from, to)`
/// from `source` to `target`, page by page. Answers records changed.
pub(super) async fn copy_range(
    source: &dyn StorageNode,
    target: &dyn StorageNode,
    sensor: &SensorId,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> ReplicationResult<u64> {
    let mut changed = 0;
    let range = Scan {
        sensor: Some(sensor.clone()),
        from_ms,
        to_ms,
        after: None,
        limit: usize::MAX,
        tombstones: true,
    };
    let mut pages = Pages::new(range, COPY_PAGE);
    while let Some(request) = pages.request() {
        let page = source.scan(request).await?;
        pages.advance(&page);
        changed += target.apply(page).await?;
    }
    Ok(changed)
}
