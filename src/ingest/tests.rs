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

/// A request of `readings` readings (its reply is never read).
fn request(readings: usize) -> Pending {
    let sensor: crate::reading::SensorId = "s1".parse().expect("a valid sensor id");
    let readings = (0..readings as i64)
        .map(|ts| Reading {
            key: Key::new(sensor.clone(), ts),
            sample: Sample {
                value: 1.0,
                unit: None,
            },
        })
        .collect();
    let (reply, _) = oneshot::channel();
    Pending { readings, reply }
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
