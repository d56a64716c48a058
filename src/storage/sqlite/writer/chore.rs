//! When the journal is merged, as the next chore of the writer's worker:
//! the merge is cheap when the node is idle and must not stall writes when
//! it is not.
//!
//! Rules, by the records pending in the journal:
//! * none: nothing to do;
//! * a few: the whole journal, once the node is idle;
//! * from [`MERGE_AT`] (or while a slice merge is under way): a slice at a
//!   time between writes, so a write waits for one slice at most;
//! * from [`SLICE_NOW_AT`]: a slice before the next write even when writes
//!   queue back to back and leave no gap;
//! * from [`MERGE_ALL_AT`]: the whole journal before the next write, should
//!   even a slice per write not keep up.

use super::NodeWrite;
use crate::storage::worker::Chore;

/// Merge the journal in slices between writes once it holds this many
/// records.
pub(super) const MERGE_AT: usize = 4_096;
/// Merge a slice before the next write, gap or not, once the journal holds
/// this many records: writes queued back to back leave no gaps.
pub(super) const SLICE_NOW_AT: usize = 2 * MERGE_AT;
/// Merge the whole journal before the next write once it holds this many
/// records, should even a slice per write not keep up.
pub(super) const MERGE_ALL_AT: usize = 4 * MERGE_AT;

/// The chore for a journal of `pending` records, with or without a slice
/// merge under way (`sweeping`).
pub(super) fn next(pending: usize, sweeping: bool) -> Option<(Chore, NodeWrite)> {
    match pending {
        0 => None,
        n if n >= MERGE_ALL_AT => Some((Chore::Now, NodeWrite::Merge)),
        n if n >= SLICE_NOW_AT => Some((Chore::Now, NodeWrite::MergeSlice)),
        n if n >= MERGE_AT || sweeping => Some((Chore::BetweenWrites, NodeWrite::MergeSlice)),
        _ => Some((Chore::WhenIdle, NodeWrite::Merge)),
    }
}
