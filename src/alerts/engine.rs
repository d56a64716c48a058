//! The alert state machine (docs/api.md, Alerts). Pure: a threshold, a sensor's alert
//! state and a reading in; the new state and what changed out. No I/O and no
//! clock: time comes with the reading.
//!
//! One *episode* per excursion, never one alert per reading: a reading above
//! `max` (or below `min`) opens an episode, which stays `firing` while
//! readings stay out of range, counts them and tracks the peak, and resolves
//! when a reading comes back inside by more than the hysteresis. With `for`,
//! an excursion is only *pending* until readings have stayed out of range
//! that long (by their own timestamps), so a short spike never fires.
//! Readings are evaluated in timestamp order per sensor; a reading older than
//! the newest one seen is stored but cannot change the range state.
//!
//! `stale_after` is judged by the service's clock, passed to [`tick`]: a
//! sensor silent that long gets a `stale` episode, which its next reading
//! (late or not) resolves.

use serde::{Deserialize, Serialize};

use crate::reading::{SensorId, format_timestamp};

/// The limits for one sensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    pub sensor_id: SensorId,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub hysteresis: f64,
    /// Out of range this long (ms) before firing.
    #[serde(rename = "for", serialize_with = "as_duration")]
    pub for_ms: Option<i64>,
    /// Silent this long (ms, service clock) raises `stale`.
    #[serde(rename = "stale_after", serialize_with = "as_duration")]
    pub stale_after_ms: Option<i64>,
}

fn as_duration<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) if ms % 1_000 == 0 => s.serialize_str(&format!("{}s", ms / 1_000)),
        Some(ms) => s.serialize_str(&format!("{ms}ms")),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Above,
    Below,
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Out of range, waiting for `for` to pass; never shown to clients.
    Pending,
    Firing,
    Resolved,
}

/// One episode, as `GET /alerts` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub id: String,
    pub sensor_id: SensorId,
    pub kind: AlertKind,
    pub threshold: f64,
    /// The reading that opened the episode.
    pub value: f64,
    /// The most extreme reading of the episode.
    pub peak: f64,
    /// Out-of-range readings seen.
    pub readings: u64,
    pub state: AlertState,
    #[serde(serialize_with = "as_timestamp")]
    pub started_at: i64,
    #[serde(serialize_with = "as_optional_timestamp")]
    pub resolved_at: Option<i64>,
}

fn as_timestamp<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*ms))
}

fn as_optional_timestamp<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&format_timestamp(*ms)),
        None => s.serialize_none(),
    }
}

/// What the engine remembers per sensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SensorAlerts {
    /// Timestamp of the newest reading evaluated.
    pub last_ms: Option<i64>,
    /// The open range episode, if any (at most one: a value cannot be both
    /// above `max` and below `min`).
    pub open: Option<Alert>,
    /// An excursion waiting for `for` to pass, in the shape it will fire in.
    pub pending: Option<Alert>,
    /// When the service last received a reading (its own clock).
    pub last_seen_ms: Option<i64>,
    /// The open `stale` episode, if any.
    pub stale: Option<Alert>,
}

/// How an episode changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    /// Still firing; peak or reading count changed.
    Updated,
    Resolved,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub transition: Transition,
    pub alert: Alert,
}

/// Evaluates one reading, received at `received_ms` by the service's clock;
/// answers the episodes it changed, in order.
pub fn evaluate(
    threshold: &Threshold,
    state: &mut SensorAlerts,
    timestamp_ms: i64,
    value: f64,
    received_ms: i64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    state.last_seen_ms = Some(
        state
            .last_seen_ms
            .map_or(received_ms, |seen| seen.max(received_ms)),
    );
    if let Some(stale) = state.stale.take() {
        changes.push(Change {
            transition: Transition::Resolved,
            alert: resolve(stale, received_ms),
        });
    }
    if state.last_ms.is_some_and(|last| timestamp_ms < last) {
        return changes;
    }
    state.last_ms = Some(timestamp_ms);
    if let Some(mut alert) = state.open.take() {
        let limit = limit_of(threshold, alert.kind);
        match limit {
            Some(limit) if out_of_range(alert.kind, limit, value) => {
                alert.readings += 1;
                alert.peak = extreme(alert.kind, alert.peak, value);
                alert.threshold = limit;
                changes.push(Change {
                    transition: Transition::Updated,
                    alert: alert.clone(),
                });
                state.open = Some(alert);
                return changes;
            }
            Some(limit) if !back_inside(alert.kind, limit, threshold.hysteresis, value) => {
                state.open = Some(alert);
                return changes;
            }
            _ => {
                changes.push(Change {
                    transition: Transition::Resolved,
                    alert: resolve(alert, timestamp_ms),
                });
            }
        }
    }
    let excursion = [
        (AlertKind::Above, threshold.max),
        (AlertKind::Below, threshold.min),
    ]
    .into_iter()
    .find_map(|(kind, limit)| {
        limit
            .filter(|l| out_of_range(kind, *l, value))
            .map(|l| (kind, l))
    });
    let Some((kind, limit)) = excursion else {
        // Back in range: a pending excursion was a spike shorter than `for`.
        state.pending = None;
        return changes;
    };
    let mut candidate = match state.pending.take() {
        Some(mut pending) if pending.kind == kind => {
            pending.readings += 1;
            pending.peak = extreme(kind, pending.peak, value);
            pending.threshold = limit;
            pending
        }
        _ => Alert {
            id: format!(
                "{}:{}:{}",
                threshold.sensor_id,
                kind_name(kind),
                timestamp_ms
            ),
            sensor_id: threshold.sensor_id.clone(),
            kind,
            threshold: limit,
            value,
            peak: value,
            readings: 1,
            state: AlertState::Pending,
            started_at: timestamp_ms,
            resolved_at: None,
        },
    };
    if timestamp_ms - candidate.started_at >= threshold.for_ms.unwrap_or(0) {
        candidate.state = AlertState::Firing;
        changes.push(Change {
            transition: Transition::Fired,
            alert: candidate.clone(),
        });
        state.open = Some(candidate);
    } else {
        state.pending = Some(candidate);
    }
    changes
}

/// Checks for silence at `now_ms` (the service's clock): a sensor with
/// `stale_after` that has sent nothing that long gets a `stale` episode.
pub fn tick(threshold: &Threshold, state: &mut SensorAlerts, now_ms: i64) -> Vec<Change> {
    let (Some(after), Some(seen)) = (threshold.stale_after_ms, state.last_seen_ms) else {
        return Vec::new();
    };
    if state.stale.is_some() || now_ms - seen < after {
        return Vec::new();
    }
    let started_at = seen + after;
    let alert = Alert {
        id: format!("{}:stale:{started_at}", threshold.sensor_id),
        sensor_id: threshold.sensor_id.clone(),
        kind: AlertKind::Stale,
        threshold: after as f64 / 1_000.0,
        value: (now_ms - seen) as f64 / 1_000.0,
        peak: (now_ms - seen) as f64 / 1_000.0,
        readings: 0,
        state: AlertState::Firing,
        started_at,
        resolved_at: None,
    };
    state.stale = Some(alert.clone());
    vec![Change {
        transition: Transition::Fired,
        alert,
    }]
}

fn limit_of(threshold: &Threshold, kind: AlertKind) -> Option<f64> {
    match kind {
        AlertKind::Above => threshold.max,
        AlertKind::Below => threshold.min,
        AlertKind::Stale => None,
    }
}

/// Closes an episode at `at_ms` (a reading back in range, or its threshold removed).
pub fn resolve(mut alert: Alert, at_ms: i64) -> Alert {
    alert.state = AlertState::Resolved;
    alert.resolved_at = Some(at_ms.max(alert.started_at));
    alert
}

pub fn kind_name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Above => "above",
        AlertKind::Below => "below",
        AlertKind::Stale => "stale",
    }
}

fn out_of_range(kind: AlertKind, limit: f64, value: f64) -> bool {
    match kind {
        AlertKind::Above => value > limit,
        AlertKind::Below => value < limit,
        AlertKind::Stale => false,
    }
}

fn back_inside(kind: AlertKind, limit: f64, hysteresis: f64, value: f64) -> bool {
    match kind {
        AlertKind::Above => value < limit - hysteresis,
        AlertKind::Below => value > limit + hysteresis,
        AlertKind::Stale => true,
    }
}

fn extreme(kind: AlertKind, a: f64, b: f64) -> f64 {
    match kind {
        AlertKind::Below => a.min(b),
        AlertKind::Above | AlertKind::Stale => a.max(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(max: Option<f64>, min: Option<f64>, hysteresis: f64) -> Threshold {
        Threshold {
            sensor_id: "s".parse().expect("valid"),
            max,
            min,
            hysteresis,
            for_ms: None,
            stale_after_ms: None,
        }
    }

    /// Feeds (timestamp, value) pairs; answers the transitions in order.
    fn run(t: &Threshold, readings: &[(i64, f64)]) -> (Vec<Transition>, SensorAlerts, Vec<Change>) {
        let mut state = SensorAlerts::default();
        let mut all = Vec::new();
        for (ts, v) in readings {
            all.extend(evaluate(t, &mut state, *ts, *v, *ts));
        }
        let transitions = all
            .iter()
            .map(|c| c.transition)
            .filter(|t| *t != Transition::Updated)
            .collect();
        (transitions, state, all)
    }

    use Transition::{Fired, Resolved};

    #[test]
    fn table() {
        type Case = (&'static str, Threshold, Vec<(i64, f64)>, Vec<Transition>);
        let cases: Vec<Case> = vec![
            (
                "inside never fires",
                threshold(Some(70.0), None, 0.0),
                vec![(1, 60.0), (2, 70.0)],
                vec![],
            ),
            (
                "above fires once per episode",
                threshold(Some(70.0), None, 0.0),
                vec![(1, 75.0), (2, 80.0), (3, 90.0)],
                vec![Fired],
            ),
            (
                "back inside resolves",
                threshold(Some(70.0), None, 0.0),
                vec![(1, 75.0), (2, 60.0)],
                vec![Fired, Resolved],
            ),
            (
                "two excursions are two episodes",
                threshold(Some(70.0), None, 0.0),
                vec![(1, 75.0), (2, 60.0), (3, 75.0)],
                vec![Fired, Resolved, Fired],
            ),
            (
                "below min fires",
                threshold(None, Some(10.0), 0.0),
                vec![(1, 5.0), (2, 11.0)],
                vec![Fired, Resolved],
            ),
            (
                "hysteresis band holds",
                threshold(Some(70.0), None, 1.0),
                vec![(1, 75.0), (2, 69.5), (3, 69.0)],
                vec![Fired],
            ),
            (
                "out of the band resolves",
                threshold(Some(70.0), None, 1.0),
                vec![(1, 75.0), (2, 68.9)],
                vec![Fired, Resolved],
            ),
            (
                "late reading changes nothing",
                threshold(Some(70.0), None, 0.0),
                vec![(10, 75.0), (5, 20.0)],
                vec![Fired],
            ),
            (
                "late reading cannot fire",
                threshold(Some(70.0), None, 0.0),
                vec![(10, 20.0), (5, 99.0)],
                vec![],
            ),
            (
                "above then straight below",
                threshold(Some(70.0), Some(10.0), 0.0),
                vec![(1, 75.0), (2, 5.0)],
                vec![Fired, Resolved, Fired],
            ),
        ];
        for (name, t, readings, expected) in cases {
            assert_eq!(run(&t, &readings).0, expected, "{name}");
        }
    }

    #[test]
    fn the_spec_example() {
        // max 70, hysteresis 1: 75, 80, 69.5, 68.5 → one episode firing at
        // 75, still firing at 69.5, resolved at 68.5, peak 80, 2 readings.
        let (transitions, state, changes) = run(
            &threshold(Some(70.0), None, 1.0),
            &[(1_000, 75.0), (2_000, 80.0), (3_000, 69.5), (4_000, 68.5)],
        );
        assert_eq!(transitions, vec![Fired, Resolved]);
        assert_eq!(state.open, None);
        let resolved = &changes.last().expect("changes").alert;
        assert_eq!(
            (resolved.value, resolved.peak, resolved.readings),
            (75.0, 80.0, 2)
        );
        assert_eq!(
            (resolved.started_at, resolved.resolved_at),
            (1_000, Some(4_000))
        );
        assert_eq!(resolved.state, AlertState::Resolved);
    }

    #[test]
    fn a_threshold_changed_mid_episode_applies_to_the_next_reading() {
        let mut state = SensorAlerts::default();
        evaluate(&threshold(Some(70.0), None, 0.0), &mut state, 1, 75.0, 1);
        let changes = evaluate(&threshold(Some(80.0), None, 0.0), &mut state, 2, 75.0, 2);
        assert_eq!(
            changes.iter().map(|c| c.transition).collect::<Vec<_>>(),
            vec![Resolved]
        );
        let mut state = SensorAlerts::default();
        evaluate(&threshold(Some(70.0), None, 0.0), &mut state, 1, 75.0, 1);
        let changes = evaluate(&threshold(None, Some(0.0), 0.0), &mut state, 2, 75.0, 2);
        assert_eq!(
            changes.iter().map(|c| c.transition).collect::<Vec<_>>(),
            vec![Resolved],
            "max removed"
        );
    }

    fn with_for(for_ms: i64) -> Threshold {
        Threshold {
            for_ms: Some(for_ms),
            ..threshold(Some(70.0), None, 0.0)
        }
    }

    #[test]
    fn a_spike_shorter_than_for_never_fires() {
        let (transitions, state, _) = run(
            &with_for(30_000),
            &[(0, 80.0), (10_000, 90.0), (20_000, 60.0), (40_000, 60.0)],
        );
        assert_eq!(transitions, vec![]);
        assert_eq!((state.open, state.pending), (None, None));
    }

    #[test]
    fn staying_out_of_range_for_long_enough_fires_from_the_start() {
        let (transitions, state, changes) = run(
            &with_for(30_000),
            &[(0, 80.0), (10_000, 95.0), (30_000, 85.0)],
        );
        assert_eq!(transitions, vec![Fired]);
        let fired = &changes[0].alert;
        assert_eq!(
            (fired.started_at, fired.value, fired.peak, fired.readings),
            (0, 80.0, 95.0, 3)
        );
        assert!(state.open.is_some());
    }

    #[test]
    fn silence_raises_stale_and_the_next_reading_resolves_it() {
        let t = Threshold {
            stale_after_ms: Some(60_000),
            ..threshold(None, None, 0.0)
        };
        let mut state = SensorAlerts::default();
        assert!(
            tick(&t, &mut state, 1_000_000).is_empty(),
            "never seen: nothing to judge"
        );
        evaluate(&t, &mut state, 5, 1.0, 1_000_000);
        assert!(tick(&t, &mut state, 1_059_999).is_empty());
        let fired = tick(&t, &mut state, 1_060_000);
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].alert.kind, fired[0].alert.started_at),
            (AlertKind::Stale, 1_060_000)
        );
        assert!(
            tick(&t, &mut state, 1_200_000).is_empty(),
            "one stale episode, not one per tick"
        );
        // A late reading (older timestamp) still proves the meter is alive.
        let resolved = evaluate(&t, &mut state, 1, 2.0, 1_300_000);
        assert_eq!(
            resolved
                .iter()
                .map(|c| (c.transition, c.alert.kind))
                .collect::<Vec<_>>(),
            vec![(Resolved, AlertKind::Stale)]
        );
        assert_eq!(resolved[0].alert.resolved_at, Some(1_300_000));
    }
}
