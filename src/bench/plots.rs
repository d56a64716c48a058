//! The PNG plots of a bench run (plotters, with an embedded DejaVu font so
//! no system font library is needed):
//!
//! * `operation_time.png`: mean time of a write, a read, a fail and a
//!   recovery per strategy (the seed's comparison);
//! * `throughput.png`: readings per second per strategy and door;
//! * `recovery.png`: recovery time against readings missed.

use std::path::Path;

use plotters::chart::SeriesLabelStyle;
use plotters::prelude::*;
use plotters::style::register_font;

use super::BenchError;
use super::report::Results;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 540);
/// One colour per strategy, in the order of `Results::strategies`.
const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

fn plot_error(error: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(error.to_string())
}

/// Draws every plot into `out`.
pub fn draw_all(results: &Results, out: &Path) -> Result<(), BenchError> {
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| BenchError::Plot("the embedded font is invalid".into()))?;
    let names: Vec<String> = results
        .strategies
        .iter()
        .map(|s| format!("{} ({} copies)", s.strategy, s.copies))
        .collect();

    let operations = [
        "write (1 reading)",
        "read (1 key)",
        "fail a node",
        "recover a node",
    ];
    let times: Vec<Vec<f64>> = results
        .strategies
        .iter()
        .map(|s| {
            vec![
                s.write.http_single_mean_ms,
                s.read.point_mean_ms,
                s.fail.fail_node_ms,
                s.recover.last().map_or(0.0, |r| r.ms),
            ]
        })
        .collect();
    grouped_bars(
        &out.join("operation_time.png"),
        "Mean operation time per strategy (HTTP, one client)",
        "time per operation (ms, log scale)",
        &operations,
        &names,
        &times,
    )?;

    let doors = [
        "HTTP, 1 per request",
        "HTTP, 5,000 per request",
        "MQTT, 1 per message",
        "MQTT, 10 per message",
    ];
    let rates: Vec<Vec<f64>> = results
        .strategies
        .iter()
        .map(|s| {
            vec![
                s.write.http_single_per_s,
                s.write.http_batch_readings_per_s,
                s.write.mqtt_readings_per_s,
                s.write.mqtt_10_per_message_readings_per_s,
            ]
        })
        .collect();
    grouped_bars(
        &out.join("throughput.png"),
        "Write throughput per strategy and door (stored durably)",
        "readings per second (log scale)",
        &doors,
        &names,
        &rates,
    )?;

    recovery_lines(&out.join("recovery.png"), results, &names)
}

/// Bars for each category, one per series, on a log scale.
fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[&str],
    series: &[String],
    values: &[Vec<f64>],
) -> Result<(), BenchError> {
    let positive = values.iter().flatten().copied().filter(|v| *v > 0.0);
    let smallest = positive.clone().fold(f64::INFINITY, f64::min);
    let low = if smallest.is_finite() {
        smallest / 3.0
    } else {
        0.1
    };
    let high = positive.fold(0.0, f64::max).max(low * 10.0) * 3.0;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    // Categories label the primary x axis; bars are drawn on a secondary,
    // continuous one over the same range so that they can sit side by side.
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(
            // A segmented range covers both ends: n segments are 0..n-1.
            (0..categories.len() as i32 - 1).into_segmented(),
            (low..high).log_scale(),
        )
        .map_err(plot_error)?
        .set_secondary_coord(0.0..categories.len() as f64, (low..high).log_scale());
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => categories
                .get(*i as usize)
                .map_or(String::new(), |c| c.to_string()),
            _ => String::new(),
        })
        .y_desc(y_label)
        .y_label_formatter(&|y| short(*y))
        .label_style((FONT, 15))
        .draw()
        .map_err(plot_error)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (j, (name, row)) in series.iter().zip(values).enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        let bars = row.iter().enumerate().map(|(i, value)| {
            let left = i as f64 + 0.1 + j as f64 * width;
            Rectangle::new(
                [(left, low), (left + width * 0.95, value.max(low))],
                colour.filled(),
            )
        });
        chart
            .draw_secondary_series(bars)
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        let labels = row.iter().enumerate().map(|(i, value)| {
            let centre = i as f64 + 0.1 + (j as f64 + 0.1) * width;
            Text::new(short(*value), (centre, value.max(low) * 1.15), (FONT, 13))
        });
        chart.draw_secondary_series(labels).map_err(plot_error)?;
    }
    draw_legend(chart.configure_series_labels())?;
    root.present().map_err(plot_error)
}

/// Recovery time against readings missed, one line per strategy.
fn recovery_lines(path: &Path, results: &Results, names: &[String]) -> Result<(), BenchError> {
    let points = results.strategies.iter().flat_map(|s| &s.recover);
    let max_x = points.clone().map(|r| r.missed as f64).fold(1.0, f64::max) * 1.1;
    let max_y = points.map(|r| r.ms).fold(1.0, f64::max) * 1.2;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Recovering a node: time against readings it missed",
            (FONT, 24),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("readings missed by the node (hints replayed + repaired)")
        .y_desc("recovery time (ms)")
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .label_style((FONT, 15))
        .draw()
        .map_err(plot_error)?;
    for (j, (strategy, name)) in results.strategies.iter().zip(names).enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        let line: Vec<(f64, f64)> = strategy
            .recover
            .iter()
            .map(|r| (r.missed as f64, r.ms))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart
            .draw_series(
                line.into_iter()
                    .map(|point| Circle::new(point, 4, colour.filled())),
            )
            .map_err(plot_error)?;
    }
    draw_legend(chart.configure_series_labels())?;
    root.present().map_err(plot_error)
}

/// Draws the legend, the same on every plot.
fn draw_legend<'a, 'b, DB, CT>(
    mut style: SeriesLabelStyle<'a, 'b, DB, CT>,
) -> Result<(), BenchError>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    style
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

/// A compact number for labels: 0.42, 12.5, 850, 12k, 1.2M.
fn short(value: f64) -> String {
    match value.abs() {
        v if v >= 1e6 => format!("{:.1}M", value / 1e6),
        v if v >= 1e4 => format!("{:.0}k", value / 1e3),
        v if v >= 1e3 => format!("{:.1}k", value / 1e3),
        v if v >= 10.0 => format!("{value:.0}"),
        v if v >= 1.0 => format!("{value:.1}"),
        0.0 => "0".into(),
        _ => format!("{value:.2}"),
    }
}
