//! SVG line charts, drawn with `plotters` (its SVG backend only: no fonts,
//! no bitmaps, no system libraries). A [`LineChart`] is plain data (series of
//! `(x, y)` points, axis labels, linear or logarithmic axes); [`svg`] turns it
//! into a standalone SVG document. Reports build charts from their results
//! (`compare` for the cache comparison) and write the string wherever they
//! like, so the drawing code knows nothing about what is measured.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Index into the palette: series of one subject share a colour.
    pub color: usize,
    /// Dashed instead of solid (e.g. p99 beside a solid p50).
    pub dashed: bool,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A chart: what [`svg`] draws.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Caption above the plot.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// Logarithmic x axis (every x must then be > 0).
    pub log_x: bool,
    /// Logarithmic y axis (every y must then be > 0).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Width and height in pixels.
    pub size: (u32, u32),
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No series has a point.
    #[error("nothing to plot")]
    Empty,
    /// A value that the axis cannot show (not finite, or ≤ 0 on a log axis).
    #[error("{axis} value {value} cannot be drawn on this axis")]
    BadValue { axis: &'static str, value: f64 },
    /// plotters failed.
    #[error("drawing the chart: {0}")]
    Draw(String),
}

/// Colour-blind-safe palette (Okabe–Ito), cycled by [`Series::color`].
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Draws `chart` as a standalone SVG document.
pub fn svg(chart: &LineChart) -> Result<String, PlotError> {
    let pts = || chart.series.iter().flat_map(|s| s.points.iter().copied());
    if pts().next().is_none() {
        return Err(PlotError::Empty);
    }
    for (x, y) in pts() {
        if !x.is_finite() || (chart.log_x && x <= 0.0) {
            return Err(PlotError::BadValue {
                axis: "x",
                value: x,
            });
        }
        if !y.is_finite() || (chart.log_y && y <= 0.0) {
            return Err(PlotError::BadValue {
                axis: "y",
                value: y,
            });
        }
    }
    let (x, y) = (
        span(pts().map(|p| p.0), chart.log_x),
        span(pts().map(|p| p.1), chart.log_y),
    );
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, chart.size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        // One generic body, four axis combinations: linear and log ranges
        // are different types in plotters.
        match (chart.log_x, chart.log_y) {
            (false, false) => draw(chart, &root, x.0..x.1, y.0..y.1),
            (true, false) => draw(chart, &root, (x.0..x.1).log_scale(), y.0..y.1),
            (false, true) => draw(chart, &root, x.0..x.1, (y.0..y.1).log_scale()),
            (true, true) => draw(chart, &root, (x.0..x.1).log_scale(), (y.0..y.1).log_scale()),
        }?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// The axis range covering `values`, with a margin so no point sits on the
/// frame: 10 % of the span on a linear axis, ×/÷ 1.25 on a log axis.
fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if log {
        (lo / 1.25, hi * 1.25)
    } else {
        let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-9);
        (lo - pad, hi + pad)
    }
}

/// An axis label. A log axis has a key point at every 1..9 × 10^k; only
/// 1, 2 and 5 × 10^k are labelled there, so labels do not collide.
fn label(v: f64, log: bool) -> String {
    if log && v > 0.0 {
        let lead = (v / 10f64.powf(v.log10().floor())).round();
        if ![1.0, 2.0, 5.0].contains(&lead) {
            return String::new();
        }
    }
    number(v)
}

/// "2000" rather than "2000.0", "0.5" rather than "0.500".
fn number(v: f64) -> String {
    if v == v.round() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

fn draw<X, Y>(
    chart: &LineChart,
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    x: X,
    y: Y,
) -> Result<(), PlotError>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    ctx.configure_mesh()
        // Bold lines at the labelled values only: a log axis's light lines
        // crowd into a grey band.
        .light_line_style(TRANSPARENT)
        .x_labels(if chart.log_x { 30 } else { 8 })
        .y_labels(if chart.log_y { 30 } else { 8 })
        .x_label_formatter(&|v| label(*v, chart.log_x))
        .y_label_formatter(&|v| label(*v, chart.log_y))
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err)?;
    for s in &chart.series {
        let color = PALETTE[s.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let anno = if s.dashed {
            ctx.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))
        } else {
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))
        }
        .map_err(draw_err)?;
        let dashed = s.dashed;
        anno.label(&s.name).legend(move |(x, y)| {
            // A short dash pair for dashed lines, one stroke for solid ones.
            if dashed {
                PathElement::new(vec![(x, y), (x + 7, y)], color.stroke_width(2))
            } else {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            }
        });
        ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log: bool, points: Vec<(f64, f64)>) -> LineChart {
        LineChart {
            title: "t".into(),
            x_label: "viewers".into(),
            y_label: "ms".into(),
            log_x: log,
            log_y: log,
            series: vec![
                Series {
                    name: "alpha p50".into(),
                    color: 0,
                    dashed: false,
                    points: points.clone(),
                },
                Series {
                    name: "alpha p99".into(),
                    color: 0,
                    dashed: true,
                    points: points.iter().map(|&(x, y)| (x, y * 2.0)).collect(),
                },
            ],
            size: (640, 400),
        }
    }

    #[test]
    fn draws_an_svg_with_the_legend_on_either_scale() {
        for log in [false, true] {
            let s = svg(&chart(log, vec![(100.0, 2.0), (1000.0, 30.0)])).unwrap();
            assert!(s.starts_with("<svg"), "{}", &s[..40.min(s.len())]);
            assert!(s.contains("alpha p50") && s.contains("alpha p99"));
            assert!(s.contains("viewers") && s.contains("<polyline"));
        }
    }

    #[test]
    fn refuses_what_it_cannot_draw() {
        assert!(matches!(svg(&chart(false, vec![])), Err(PlotError::Empty)));
        assert!(matches!(
            svg(&chart(true, vec![(100.0, -1.0)])),
            Err(PlotError::BadValue { axis: "y", .. })
        ));
        assert!(matches!(
            svg(&chart(false, vec![(f64::NAN, 1.0)])),
            Err(PlotError::BadValue { axis: "x", .. })
        ));
    }
}
