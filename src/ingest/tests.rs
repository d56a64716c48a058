//! How batches form: polled by hand, so that "not yet" is a fact of the
//! state, not of a timeout.

use std::pin::pin;
use std::task::Poll;

use futures::poll;

use super::*;
use crate::reading::Sample;

fn batchers() -> (mpsc::UnboundedSender<Pending>, Batchers) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (sender, Batchers::new(receiver))
}

fn readings(count: usize) -> Vec<Reading> {
    let sensor: crate::reading::SensorId = "s1".parse().expect("a valid sensor id");
    (0..count as i64)
        .map(|ts| Reading {
            key: Key::new(sensor.clone(), ts),
            sample: Sample {
                value: 1.0,
                unit: None,
            },
        })
        .collect()
}

/// A request of `count` readings (its reply is never read).
fn request(count: usize) -> Pending {
    let (reply, _) = oneshot::channel();
    let room = Arc::new(Semaphore::new(count.max(1)))
        .try_acquire_many_owned(count.max(1) as u32)
        .expect("a fresh semaphore has room");
    Pending {
        readings: readings(count),
        reply,
        _room: room,
    }
}

/// The batch a poll of `next_batch` answered, or a failure saying why
/// there should have been one.
fn ready(poll: Poll<Option<Batch>>, why: &str) -> Batch {
    match poll {
        Poll::Ready(Some(batch)) => batch,
        _ => panic!("no batch: {why}"),
    }
}

fn sizes(batch: &Batch) -> Vec<usize> {
    batch.requests.iter().map(|p| p.readings.len()).collect()
}

#[tokio::test]
async fn with_nothing_being_stored_a_batch_takes_what_is_queued_at_once() {
    let (sender, shared) = batchers();
    for n in [1, 2, 3] {
        sender.send(request(n)).expect("queue open");
    }
    let mut queue = shared.queue.lock().await;
    let batch = shared.next_batch(&mut queue).await.expect("a batch");
    assert_eq!(sizes(&batch), [1, 2, 3]);
    assert_eq!(batch.readings, 6);
    assert_eq!(shared.storing.load(Ordering::Acquire), 6);
}

#[tokio::test]
async fn beside_a_larger_batch_being_stored_a_small_one_waits_to_match_it() {
    let (sender, shared) = batchers();
    shared.storing.store(4, Ordering::Release);
    let mut queue = shared.queue.lock().await;
    let mut next = pin!(shared.next_batch(&mut queue));
    sender.send(request(1)).expect("queue open");
    assert!(poll!(next.as_mut()).is_pending());
    sender.send(request(2)).expect("queue open");
    assert!(poll!(next.as_mut()).is_pending());
    sender.send(request(1)).expect("queue open");
    let batch = ready(
        poll!(next.as_mut()),
        "four readings match the four being stored",
    );
    assert_eq!(sizes(&batch), [1, 2, 1]);
    assert_eq!(shared.storing.load(Ordering::Acquire), 8);
}

#[tokio::test]
async fn a_waiting_batch_goes_once_the_batch_being_stored_is_done() {
    let (sender, shared) = batchers();
    shared.storing.store(10, Ordering::Release);
    let mut queue = shared.queue.lock().await;
    let mut next = pin!(shared.next_batch(&mut queue));
    sender.send(request(1)).expect("queue open");
    assert!(poll!(next.as_mut()).is_pending());
    shared.finished(10);
    let batch = ready(poll!(next.as_mut()), "nothing is being stored any more");
    assert_eq!(sizes(&batch), [1]);
    assert_eq!(shared.storing.load(Ordering::Acquire), 1);
}

#[tokio::test]
async fn a_batch_of_overlap_at_readings_goes_beside_any_other() {
    let (sender, shared) = batchers();
    shared.storing.store(MAX_COMBINED, Ordering::Release);
    sender.send(request(OVERLAP_AT)).expect("queue open");
    let mut queue = shared.queue.lock().await;
    let mut next = pin!(shared.next_batch(&mut queue));
    let batch = ready(
        poll!(next.as_mut()),
        "a batch of OVERLAP_AT readings does not wait",
    );
    assert_eq!(sizes(&batch), [OVERLAP_AT]);
}

#[tokio::test]
async fn a_closed_queue_hands_over_the_waiting_batch_then_ends() {
    let (sender, shared) = batchers();
    shared.storing.store(10, Ordering::Release);
    sender.send(request(1)).expect("queue open");
    let mut queue = shared.queue.lock().await;
    {
        let mut next = pin!(shared.next_batch(&mut queue));
        assert!(poll!(next.as_mut()).is_pending());
        drop(sender);
        let batch = ready(
            poll!(next.as_mut()),
            "closing the queue must not strand a waiting batch",
        );
        assert_eq!(sizes(&batch), [1]);
    }
    assert!(shared.next_batch(&mut queue).await.is_none());
}

#[tokio::test]
async fn a_caller_waits_for_room_while_the_queue_holds_its_limit_of_readings() {
    let (ingestor, shared) = Ingestor::unstarted();
    let mut queue = shared.queue.lock().await;
    let mut first = pin!(ingestor.try_ingest(readings(MAX_QUEUED_READINGS - 1), Door::Http));
    assert!(poll!(first.as_mut()).is_pending());
    let mut second = pin!(ingestor.try_ingest(readings(2), Door::Http));
    assert!(poll!(second.as_mut()).is_pending());
    let queued = queue.try_recv().expect("the first call is queued");
    assert_eq!(queued.readings.len(), MAX_QUEUED_READINGS - 1);
    assert!(
        queue.try_recv().is_err(),
        "two more readings do not fit beside the first call's"
    );
    // Answering the first call gives its room back.
    drop(queued);
    assert!(matches!(poll!(first.as_mut()), Poll::Ready(Err(_))));
    assert!(poll!(second.as_mut()).is_pending());
    let queued = queue.try_recv().expect("the second call is queued now");
    assert_eq!(queued.readings.len(), 2);
}

#[tokio::test]
async fn a_call_larger_than_the_queue_still_goes_alone() {
    let (ingestor, shared) = Ingestor::unstarted();
    let mut queue = shared.queue.lock().await;
    let mut huge = pin!(ingestor.try_ingest(readings(MAX_QUEUED_READINGS + 1), Door::Http));
    assert!(poll!(huge.as_mut()).is_pending());
    let queued = queue
        .try_recv()
        .expect("a call larger than the queue is queued");
    assert_eq!(queued.readings.len(), MAX_QUEUED_READINGS + 1);
}
