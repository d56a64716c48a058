//! The stretch of time a sensor page shows: a named range ending now
//! (`range=24h`, the default, which follows the clock) or a fixed one
//! (`from` and `to`, RFC 3339 or a `datetime-local` value in the viewer's
//! zone). Zooming and paging give fixed windows, so every view has a URL
//! that can be shared.

use serde::Deserialize;

use super::view::Zone;
use crate::reading::format_timestamp;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The named ranges offered, ending now.
pub const RANGES: [(&str, i64); 4] = [
    ("1h", HOUR),
    ("24h", DAY),
    ("7d", 7 * DAY),
    ("30d", 30 * DAY),
];
/// The shortest and longest window shown.
pub const MIN_SPAN_MS: i64 = 5 * MINUTE;
pub const MAX_SPAN_MS: i64 = 400 * DAY;

/// A sensor page's query: its window, the chart's width and the zone.
#[derive(Debug, Default, Deserialize)]
pub struct WindowQuery {
    pub range: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The chart's width in pixels, as the page measured it.
    pub w: Option<u32>,
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
    /// The named range, when the window follows the clock.
    pub range: Option<&'static str>,
}

impl Window {
    /// The window `query` asks for at `now_ms`: a valid `from`/`to` pair,
    /// else the named range (24 h when missing or unknown).
    pub fn of(query: &WindowQuery, zone: &Zone, now_ms: i64) -> Self {
        let fixed = match (query.from.as_deref(), query.to.as_deref()) {
            (Some(from), Some(to)) => zone.parse(from).zip(zone.parse(to)),
            _ => None,
        };
        if let Some((from_ms, to_ms)) = fixed
            && (MIN_SPAN_MS..=MAX_SPAN_MS).contains(&(to_ms - from_ms))
        {
            return Self {
                from_ms,
                to_ms,
                range: None,
            };
        }
        let (name, span) = RANGES
            .iter()
            .find(|(name, _)| Some(*name) == query.range.as_deref())
            .copied()
            .unwrap_or(RANGES[1]);
        Self {
            from_ms: now_ms - span,
            to_ms: now_ms,
            range: Some(name),
        }
    }

    pub fn span_ms(&self) -> i64 {
        self.to_ms - self.from_ms
    }

    /// This window's query string (without the chart width or zone).
    pub fn query(&self) -> String {
        match self.range {
            Some(name) => format!("range={name}"),
            None => fixed_query(self.from_ms, self.to_ms),
        }
    }

    /// The fixed window `fraction` of a span later (earlier if negative).
    pub fn shifted(&self, fraction: f64) -> String {
        let by = (self.span_ms() as f64 * fraction) as i64;
        fixed_query(self.from_ms + by, self.to_ms + by)
    }

    /// The fixed window `factor` times as long, about the same middle,
    /// within the shortest and longest span.
    pub fn zoomed(&self, factor: f64) -> String {
        let span = ((self.span_ms() as f64 * factor) as i64).clamp(MIN_SPAN_MS, MAX_SPAN_MS);
        let middle = self.from_ms + self.span_ms() / 2;
        fixed_query(middle - span / 2, middle + span / 2)
    }
}

fn fixed_query(from_ms: i64, to_ms: i64) -> String {
    serde_urlencoded::to_string([
        ("from", format_timestamp(from_ms)),
        ("to", format_timestamp(to_ms)),
    ])
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(range: Option<&str>, from: Option<&str>, to: Option<&str>) -> WindowQuery {
        WindowQuery {
            range: range.map(String::from),
            from: from.map(String::from),
            to: to.map(String::from),
            ..WindowQuery::default()
        }
    }

    #[test]
    fn named_ranges_follow_the_clock_and_fixed_ones_do_not() {
        let utc = Zone::utc();
        let now = 100 * DAY;
        let default = Window::of(&WindowQuery::default(), &utc, now);
        assert_eq!(
            (default.from_ms, default.to_ms, default.range),
            (now - DAY, now, Some("24h"))
        );
        let week = Window::of(&query(Some("7d"), None, None), &utc, now);
        assert_eq!(week.span_ms(), 7 * DAY);
        let fixed = Window::of(
            &query(None, Some("1970-01-02T00:00:00Z"), Some("1970-01-02T06:00")),
            &utc,
            now,
        );
        assert_eq!(
            (fixed.from_ms, fixed.to_ms, fixed.range),
            (DAY, DAY + 6 * HOUR, None)
        );
        // Backwards, too short or unreadable: the default range instead.
        for (from, to) in [
            ("1970-01-03", "1970-01-02"),
            ("1970-01-02T00:00", "1970-01-02T00:01"),
            ("x", "y"),
        ] {
            assert_eq!(
                Window::of(&query(None, Some(from), Some(to)), &utc, now),
                default
            );
        }
    }

    #[test]
    fn zooming_keeps_the_middle_and_the_bounds() {
        let window = Window {
            from_ms: 0,
            to_ms: DAY,
            range: None,
        };
        let utc = Zone::utc();
        let zoomed_in: WindowQuery =
            serde_urlencoded::from_str(&window.zoomed(0.5)).expect("a query");
        let zoomed = Window::of(&zoomed_in, &utc, 0);
        assert_eq!((zoomed.from_ms, zoomed.to_ms), (6 * HOUR, 18 * HOUR));
        let far: WindowQuery = serde_urlencoded::from_str(&window.zoomed(1e6)).expect("a query");
        assert_eq!(Window::of(&far, &utc, 0).span_ms(), MAX_SPAN_MS);
        let later: WindowQuery = serde_urlencoded::from_str(&window.shifted(1.0)).expect("a query");
        assert_eq!(Window::of(&later, &utc, 0).from_ms, DAY);
    }
}
