//! Charts drawn on the server as SVG (templates `console/chart.svg` and
//! `console/bars.svg`): a sensor's history as a band from each bucket's
//! lowest to highest reading with its mean drawn as a line, and daily
//! energy as bars. Pure: buckets in, markup out.
//!
//! Rules:
//! * the number of buckets follows the chart's width in pixels (about one
//!   per [`PX_PER_BUCKET`]), whatever the range holds, so a year of minute
//!   data costs the reading of it and no more to draw than an hour;
//! * bucket widths and axis ticks are "round" ([`STEPS_MS`]), aligned in the
//!   viewer's zone, so ticks fall on local hours and midnights;
//! * a gap of more than two buckets without readings breaks the line;
//! * every chart carries a title and a text description (its range, lowest,
//!   mean and highest value, alert episodes) for screen readers.

use askama::Template;

use super::view::{Zone, number};
use crate::alerts::engine::AlertKind;
use crate::history::{Buckets, Spread};

/// Roughly one bucket per this many pixels of the plot's width.
pub const PX_PER_BUCKET: u32 = 3;
/// The narrowest and widest chart drawn (pixels).
pub const MIN_WIDTH: u32 = 280;
pub const MAX_WIDTH: u32 = 2400;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Round widths for buckets and axis ticks: each divides a day evenly or
/// is whole days, so it can follow a time zone.
const STEPS_MS: [i64; 22] = [
    SECOND,
    2 * SECOND,
    5 * SECOND,
    10 * SECOND,
    15 * SECOND,
    30 * SECOND,
    MINUTE,
    2 * MINUTE,
    5 * MINUTE,
    10 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    7 * DAY,
    14 * DAY,
    28 * DAY,
];

/// Space around the plot for the axes' labels (pixels).
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 26.0;

/// `a / b` rounded up, for positive `a` and `b`.
pub fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The chart width asked for, within bounds.
pub fn clamp_width(width: Option<u32>) -> u32 {
    width.unwrap_or(800).clamp(MIN_WIDTH, MAX_WIDTH)
}

/// The smallest round step at least `ms` long (the longest if none is).
fn round_step(ms: i64) -> i64 {
    STEPS_MS
        .iter()
        .copied()
        .find(|&step| step >= ms)
        .unwrap_or(STEPS_MS[STEPS_MS.len() - 1])
}

/// The bucket width for a chart `width` pixels wide over `span_ms`.
pub fn bucket_ms(span_ms: i64, width: u32) -> i64 {
    let buckets = i64::from((width as f64 - LEFT - RIGHT).max(1.0) as u32 / PX_PER_BUCKET).max(1);
    round_step(ceil_div(span_ms.max(1), buckets))
}

/// A line across the plot: where, and what it says.
pub struct Tick {
    pub at: f64,
    pub label: String,
}

/// A horizontal limit line (a threshold).
pub struct Limit {
    pub y: f64,
    pub label: String,
}

/// A shaded stretch of time (an alert episode).
pub struct Shade {
    pub x: f64,
    pub width: f64,
    pub stale: bool,
    pub label: String,
}

/// An alert episode, as the chart shades it.
pub struct Episode {
    pub kind: AlertKind,
    pub start_ms: i64,
    /// `None` while firing.
    pub end_ms: Option<i64>,
}

/// What a history chart shows.
pub struct HistoryInput<'a> {
    pub sensor: &'a str,
    pub unit: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub every_ms: i64,
    pub spreads: &'a [Spread],
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub episodes: &'a [Episode],
    pub zone: &'a Zone,
    pub width: u32,
}

#[derive(Template)]
#[template(path = "console/chart.svg")]
pub struct HistoryChart {
    pub width: u32,
    pub height: u32,
    pub title: String,
    pub description: String,
    /// The plot's left, top, right and bottom edges.
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
    /// The window drawn (epoch ms), for the page's drag-to-zoom.
    pub from_ms: i64,
    pub to_ms: i64,
    pub unit: String,
    pub y_ticks: Vec<Tick>,
    pub x_ticks: Vec<Tick>,
    /// Path data: the min-max bands and the mean lines, a run of buckets
    /// without a gap each.
    pub bands: Vec<String>,
    pub means: Vec<String>,
    pub limits: Vec<Limit>,
    pub shades: Vec<Shade>,
}

/// Maps values onto pixels.
struct Scale {
    from: f64,
    to: f64,
    start_px: f64,
    end_px: f64,
}

impl Scale {
    fn px(&self, value: f64) -> f64 {
        let share = if self.to > self.from {
            (value - self.from) / (self.to - self.from)
        } else {
            0.5
        };
        round1(self.start_px + share * (self.end_px - self.start_px))
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Round value ticks covering `[low, high]`: the covered range and the
/// ticks' values.
fn value_ticks(low: f64, high: f64, wanted: usize) -> (f64, f64, Vec<f64>) {
    let (low, high) = if high > low {
        (low, high)
    } else {
        (low - 1.0, high + 1.0)
    };
    let rough = (high - low) / wanted.max(1) as f64;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= rough)
        .unwrap_or(10.0 * magnitude);
    let first = (low / step).floor() * step;
    let last = (high / step).ceil() * step;
    let count = ((last - first) / step).round() as usize;
    let ticks = (0..=count).map(|i| first + i as f64 * step).collect();
    (first, last, ticks)
}

/// Time ticks between `from` and `to`, at a round step aligned in `zone`,
/// no closer than about 90 pixels.
fn time_ticks(from: i64, to: i64, plot_px: f64, zone: &Zone) -> Vec<(i64, String)> {
    let most = (plot_px / 90.0).max(2.0) as i64;
    let step = round_step(ceil_div((to - from).max(1), most));
    let Ok(buckets) = Buckets::new(step, Some(zone.zone.clone())) else {
        return Vec::new();
    };
    let pattern = if step >= DAY {
        "%d %b"
    } else if to - from > DAY {
        "%d %b %H:%M"
    } else {
        "%H:%M"
    };
    let mut ticks = Vec::new();
    let mut at = buckets.start_of(from);
    if at < from {
        at = buckets.next_start(at);
    }
    while at <= to && ticks.len() < 64 {
        ticks.push((at, zone.format(at, pattern)));
        at = buckets.next_start(at);
    }
    ticks
}

/// The chart's height for its width.
fn height_for(width: u32) -> u32 {
    (width * 9 / 20).clamp(220, 380)
}

impl HistoryChart {
    pub fn draw(input: &HistoryInput<'_>) -> Self {
        let width = input.width.clamp(MIN_WIDTH, MAX_WIDTH);
        let height = height_for(width);
        let (left, top) = (LEFT, TOP);
        let (right, bottom) = (f64::from(width) - RIGHT, f64::from(height) - BOTTOM);

        let low = input
            .spreads
            .iter()
            .map(|s| s.min)
            .fold(f64::INFINITY, f64::min);
        let high = input
            .spreads
            .iter()
            .map(|s| s.max)
            .fold(f64::NEG_INFINITY, f64::max);
        let limits_shown = [input.max, input.min].into_iter().flatten();
        let (low, high) = limits_shown.fold((low, high), |(lo, hi), l| (lo.min(l), hi.max(l)));
        let (low, high) = if low.is_finite() {
            (low, high)
        } else {
            (0.0, 1.0)
        };
        let (y_from, y_to, y_values) = value_ticks(low, high, 5);
        let y = Scale {
            from: y_from,
            to: y_to,
            start_px: bottom,
            end_px: top,
        };
        let x = Scale {
            from: input.from_ms as f64,
            to: input.to_ms as f64,
            start_px: left,
            end_px: right,
        };
        let middle = |s: &Spread| x.px((s.start_ms + input.every_ms / 2) as f64);

        let mut bands = Vec::new();
        let mut means = Vec::new();
        for run in runs(input.spreads, input.every_ms) {
            let mut band = String::new();
            let mut mean = String::new();
            for (i, s) in run.iter().enumerate() {
                let verb = if i == 0 { 'M' } else { 'L' };
                band.push_str(&format!("{verb}{} {} ", middle(s), y.px(s.max)));
                mean.push_str(&format!("{verb}{} {} ", middle(s), y.px(s.mean)));
            }
            for s in run.iter().rev() {
                band.push_str(&format!("L{} {} ", middle(s), y.px(s.min)));
            }
            band.push('Z');
            bands.push(band);
            means.push(mean.trim_end().to_string());
        }

        let unit = input.unit.to_string();
        let with_unit = |v: f64| {
            if unit.is_empty() {
                number(v)
            } else {
                format!("{} {unit}", number(v))
            }
        };
        let limits = [("max", input.max), ("min", input.min)]
            .into_iter()
            .filter_map(|(name, limit)| {
                limit.map(|v| Limit {
                    y: y.px(v),
                    label: format!("{name} {}", with_unit(v)),
                })
            })
            .collect();
        let shades: Vec<Shade> = input
            .episodes
            .iter()
            .filter_map(|e| {
                let start = e.start_ms.max(input.from_ms);
                let end = e.end_ms.unwrap_or(input.to_ms).min(input.to_ms);
                (end > start).then(|| {
                    let (x0, x1) = (x.px(start as f64), x.px(end as f64));
                    Shade {
                        x: x0,
                        width: round1((x1 - x0).max(1.0)),
                        stale: e.kind == AlertKind::Stale,
                        label: format!(
                            "{} alert from {} to {}",
                            crate::alerts::engine::kind_name(e.kind),
                            input.zone.datetime(e.start_ms),
                            e.end_ms.map_or("now".into(), |t| input.zone.datetime(t))
                        ),
                    }
                })
            })
            .collect();

        let range = format!(
            "{} to {} ({})",
            input.zone.datetime(input.from_ms),
            input.zone.datetime(input.to_ms),
            input.zone.name
        );
        let description = if input.spreads.is_empty() {
            format!("No readings from {range}.")
        } else {
            let mean =
                input.spreads.iter().map(|s| s.mean).sum::<f64>() / input.spreads.len() as f64;
            format!(
                "From {range}: lowest {}, mean {}, highest {}; {} alert episode(s) shown.",
                with_unit(low_of(input.spreads)),
                with_unit(mean),
                with_unit(high_of(input.spreads)),
                shades.len()
            )
        };
        Self {
            width,
            height,
            title: format!(
                "{} — lowest, mean and highest per {}",
                input.sensor,
                duration_name(input.every_ms)
            ),
            description,
            left,
            top,
            right,
            bottom,
            from_ms: input.from_ms,
            to_ms: input.to_ms,
            unit,
            y_ticks: y_values
                .into_iter()
                .map(|v| Tick {
                    at: y.px(v),
                    label: number(v),
                })
                .collect(),
            x_ticks: time_ticks(input.from_ms, input.to_ms, right - left, input.zone)
                .into_iter()
                .map(|(at, label)| Tick {
                    at: x.px(at as f64),
                    label,
                })
                .collect(),
            bands,
            means,
            limits,
            shades,
        }
    }
}

fn low_of(spreads: &[Spread]) -> f64 {
    spreads.iter().map(|s| s.min).fold(f64::INFINITY, f64::min)
}

fn high_of(spreads: &[Spread]) -> f64 {
    spreads
        .iter()
        .map(|s| s.max)
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Runs of buckets with no gap longer than two buckets inside.
fn runs(spreads: &[Spread], every_ms: i64) -> Vec<&[Spread]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=spreads.len() {
        let gap =
            i == spreads.len() || spreads[i].start_ms - spreads[i - 1].start_ms > 2 * every_ms;
        if gap {
            runs.push(&spreads[start..i]);
            start = i;
        }
    }
    runs
}

/// `every_ms` in words: `10 minutes`, `2 days`.
pub fn duration_name(every_ms: i64) -> String {
    let (count, unit) = match every_ms {
        ms if ms % DAY == 0 => (ms / DAY, "day"),
        ms if ms % HOUR == 0 => (ms / HOUR, "hour"),
        ms if ms % MINUTE == 0 => (ms / MINUTE, "minute"),
        ms => (ms / SECOND, "second"),
    };
    if count == 1 {
        unit.to_string()
    } else {
        format!("{count} {unit}s")
    }
}

/// One day's bar.
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub label: String,
    /// The value, written out (shown on hover and to screen readers).
    pub value: String,
    /// Label this bar's day under the axis (not every day fits).
    pub labelled: bool,
}

#[derive(Template)]
#[template(path = "console/bars.svg")]
pub struct DailyBars {
    pub width: u32,
    pub height: u32,
    pub title: String,
    pub description: String,
    pub left: f64,
    pub bottom: f64,
    pub right: f64,
    pub y_ticks: Vec<Tick>,
    pub bars: Vec<Bar>,
}

impl DailyBars {
    /// Bars for `days` (local day start, energy), in `unit`.
    pub fn draw(sensor: &str, days: &[(i64, f64)], unit: &str, zone: &Zone, width: u32) -> Self {
        let width = width.clamp(MIN_WIDTH, MAX_WIDTH);
        let height = 200;
        let (left, top) = (LEFT, TOP);
        let (right, bottom) = (f64::from(width) - RIGHT, f64::from(height) - BOTTOM);
        let high = days.iter().map(|d| d.1).fold(0.0, f64::max);
        let (_, y_to, y_values) = value_ticks(0.0, high.max(f64::MIN_POSITIVE), 4);
        let y = Scale {
            from: 0.0,
            to: y_to,
            start_px: bottom,
            end_px: top,
        };
        let slot = (right - left) / days.len().max(1) as f64;
        let every_label = (40.0 / slot).ceil().max(1.0) as usize;
        let bars = days
            .iter()
            .enumerate()
            .map(|(i, &(day, energy))| {
                let top_px = y.px(energy.max(0.0));
                Bar {
                    x: round1(left + i as f64 * slot + slot * 0.15),
                    y: top_px,
                    width: round1(slot * 0.7),
                    height: round1(bottom - top_px),
                    label: zone.format(day, "%d %b"),
                    value: format!(
                        "{}: {} {unit}",
                        zone.format(day, "%a %d %b %Y"),
                        number(energy)
                    ),
                    labelled: (days.len() - 1 - i).is_multiple_of(every_label),
                }
            })
            .collect();
        let total: f64 = days.iter().map(|d| d.1).sum();
        Self {
            width,
            height,
            title: format!("{sensor} — energy per day ({unit}, days from local midnight)"),
            description: format!(
                "{} days in {}: {} {unit} in all.",
                days.len(),
                zone.name,
                number(total)
            ),
            left,
            bottom,
            right,
            y_ticks: y_values
                .into_iter()
                .map(|v| Tick {
                    at: y.px(v),
                    label: number(v),
                })
                .collect(),
            bars,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(start_ms: i64, value: f64) -> Spread {
        Spread {
            start_ms,
            min: value - 1.0,
            mean: value,
            max: value + 1.0,
        }
    }

    #[test]
    fn buckets_follow_the_width_not_the_data() {
        // A day on an 800 px chart: 10-minute buckets (144).
        assert_eq!(bucket_ms(DAY, 800), 10 * MINUTE);
        // A year: two-day buckets (183), however many readings it holds.
        assert_eq!(bucket_ms(365 * DAY, 800), 2 * DAY);
        // An hour on a phone: minute buckets (60).
        assert_eq!(bucket_ms(HOUR, 390), MINUTE);
    }

    #[test]
    fn value_ticks_are_round_and_cover_the_range() {
        let (from, to, ticks) = value_ticks(3.2, 97.5, 5);
        assert_eq!((from, to), (0.0, 100.0));
        assert_eq!(ticks, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let (from, to, _) = value_ticks(5.0, 5.0, 5);
        assert!(from < 5.0 && to > 5.0, "a flat line still gets a range");
    }

    #[test]
    fn a_gap_breaks_the_line_and_ticks_fall_on_local_hours() {
        let zone = Zone::of(Some("Asia/Kolkata"), &axum::http::HeaderMap::new());
        let spreads = [
            spread(0, 1.0),
            spread(MINUTE, 2.0),
            spread(10 * MINUTE, 3.0),
        ];
        let chart = HistoryChart::draw(&HistoryInput {
            sensor: "s1",
            unit: "W",
            from_ms: 0,
            to_ms: HOUR,
            every_ms: MINUTE,
            spreads: &spreads,
            max: Some(10.0),
            min: None,
            episodes: &[Episode {
                kind: AlertKind::Above,
                start_ms: 30 * MINUTE,
                end_ms: None,
            }],
            zone: &zone,
            width: 800,
        });
        assert_eq!(chart.bands.len(), 2, "two runs either side of the gap");
        assert_eq!(chart.limits.len(), 1);
        assert_eq!(chart.shades.len(), 1);
        assert!(chart.shades[0].x > chart.left && chart.shades[0].width > 0.0);
        // Kolkata is UTC+05:30: the first tick is a local round time.
        assert!(
            chart.x_ticks.iter().all(|t| t.label.ends_with('0')),
            "{:?}",
            chart.x_ticks.iter().map(|t| &t.label).collect::<Vec<_>>()
        );
        assert!(
            chart.description.contains("highest 4 W"),
            "{}",
            chart.description
        );
        let svg = chart.render().expect("renders");
        assert!(svg.contains("<title") && svg.contains("<desc"));
    }
}
