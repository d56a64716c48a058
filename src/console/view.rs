//! What every console page shares: its frame (title, role, time zone), the
//! viewer's time zone and how times and ages are written in it, and
//! rendering a template into a response.
//!
//! The viewer's zone comes from the page's `tz` parameter, else from the
//! `eg_tz` cookie the console's script sets from the browser, else UTC; an
//! unknown zone name counts as none.

use askama::Template;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::session::Viewer;

/// The cookie holding the browser's IANA time zone.
pub const ZONE_COOKIE: &str = "eg_tz";

/// Renders `page` with `status`, or a plain 500 if the template fails.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be drawn",
            )
                .into_response()
        }
    }
}

/// An entry of the navigation bar.
pub struct NavLink {
    pub section: &'static str,
    pub href: &'static str,
    pub name: &'static str,
}

/// The navigation bar, in order.
pub const NAV: [NavLink; 4] = [
    NavLink {
        section: "overview",
        href: "/ui/",
        name: "Overview",
    },
    NavLink {
        section: "sensors",
        href: "/ui/sensors",
        name: "Sensors",
    },
    NavLink {
        section: "alerts",
        href: "/ui/alerts",
        name: "Alerts",
    },
    NavLink {
        section: "nodes",
        href: "/ui/nodes",
        name: "Nodes",
    },
];

/// What every page's frame shows.
pub struct Frame {
    pub title: String,
    pub role: &'static str,
    /// The zone the page's times are written in (IANA name).
    pub zone: String,
    /// The navigation entry to mark as current.
    pub section: &'static str,
    /// When the page was rendered (epoch ms): live updates older than this
    /// are not applied to it.
    pub rendered_ms: i64,
    /// The live version the page shows at least.
    pub live_version: u64,
}

impl Frame {
    pub fn new(
        title: impl Into<String>,
        section: &'static str,
        viewer: &Viewer,
        zone: &Zone,
    ) -> Self {
        Self {
            title: title.into(),
            role: viewer.role.as_str(),
            zone: zone.name.clone(),
            section,
            rendered_ms: crate::reading::now_ms(),
            live_version: viewer.live_version,
        }
    }

    /// The navigation bar's entries.
    pub fn nav(&self) -> &'static [NavLink] {
        &NAV
    }
}

/// The viewer's time zone.
#[derive(Clone)]
pub struct Zone {
    pub name: String,
    pub zone: TimeZone,
}

impl Zone {
    pub fn utc() -> Self {
        Self {
            name: "UTC".into(),
            zone: TimeZone::UTC,
        }
    }

    /// The zone named by `tz`, else by the cookie, else UTC.
    pub fn of(tz: Option<&str>, headers: &HeaderMap) -> Self {
        tz.or_else(|| cookie(headers, ZONE_COOKIE))
            .and_then(|name| {
                TimeZone::get(name).ok().map(|zone| Self {
                    name: name.to_string(),
                    zone,
                })
            })
            .unwrap_or_else(Self::utc)
    }

    /// `ms` as `2026-12-02 17:40:05` in this zone.
    pub fn datetime(&self, ms: i64) -> String {
        self.format(ms, "%Y-%m-%d %H:%M:%S")
    }

    /// `ms` formatted with a strftime pattern in this zone.
    pub fn format(&self, ms: i64, pattern: &str) -> String {
        match Timestamp::from_millisecond(ms) {
            Ok(ts) => ts.to_zoned(self.zone.clone()).strftime(pattern).to_string(),
            Err(_) => "–".into(),
        }
    }

    /// `ms` as a `datetime-local` input's value in this zone.
    pub fn input_value(&self, ms: i64) -> String {
        self.format(ms, "%Y-%m-%dT%H:%M")
    }

    /// A time given as the API takes one (epoch seconds or milliseconds,
    /// RFC 3339 `2026-12-02T10:00:00Z`) or as a `datetime-local` value in
    /// this zone (`2026-12-02T10:00`).
    pub fn parse(&self, text: &str) -> Option<i64> {
        if let Ok(number) = text.parse::<f64>() {
            return crate::reading::parse_timestamp_number(number).ok();
        }
        if let Ok(ts) = text.parse::<Timestamp>() {
            return Some(ts.as_millisecond());
        }
        let civil: jiff::civil::DateTime = text.parse().ok()?;
        let zoned = civil.to_zoned(self.zone.clone()).ok()?;
        Some(zoned.timestamp().as_millisecond())
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// How long ago `ms` was, at `now_ms`, in a few characters: `12 s`,
/// `3 min`, `2 h`, `5 d`.
pub fn age(now_ms: i64, ms: i64) -> String {
    let seconds = (now_ms - ms).max(0) / 1_000;
    match seconds {
        s if s < 90 => format!("{s} s"),
        s if s < 90 * 60 => format!("{} min", s / 60),
        s if s < 36 * 3600 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// A value written with at most `digits` significant decimals, without
/// trailing zeros: `230.5`, `0.0125`, `1200`.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let magnitude = value.abs();
    let decimals = if magnitude >= 100.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        4
    };
    let text = format!("{value:.decimals$}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_and_read_in_the_viewers_zone() {
        let rome = Zone::of(Some("Europe/Rome"), &HeaderMap::new());
        let noon_utc = 1_764_676_800_000; // 2025-12-02T12:00:00Z
        assert_eq!(rome.datetime(noon_utc), "2025-12-02 13:00:00");
        assert_eq!(rome.parse("2025-12-02T13:00"), Some(noon_utc));
        assert_eq!(rome.parse("2025-12-02T12:00:00Z"), Some(noon_utc));
        assert_eq!(rome.parse("yesterday"), None);
        assert_eq!(rome.parse("1764676800"), Some(noon_utc), "epoch seconds");
        assert_eq!(rome.parse("1764676800000"), Some(noon_utc), "epoch ms");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=b; eg_tz=Asia/Tokyo".parse().expect("ascii"),
        );
        assert_eq!(Zone::of(None, &headers).name, "Asia/Tokyo");
        assert_eq!(Zone::of(Some("Mars/Olympus"), &headers).name, "UTC");
    }

    #[test]
    fn ages_and_numbers_are_short() {
        assert_eq!(age(100_000, 40_000), "60 s");
        assert_eq!(age(10 * 3_600_000, 0), "10 h");
        assert_eq!(age(0, 5_000), "0 s");
        assert_eq!(number(230.0), "230");
        assert_eq!(number(1.256), "1.26");
        assert_eq!(number(-0.00001), "0");
        assert_eq!(number(f64::NAN), "–");
    }
}
