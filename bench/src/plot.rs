//! SVG plots of benchmark results (plotters, no fonts needed: SVG text).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One line per series, both axes logarithmic (sizes and times spanning decades).
pub fn log_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 * 0.8..x1 * 1.25).log_scale(),
            (y0 * 0.5..y1 * 2.0).log_scale(),
        )
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y < 0.1 {
                format!("{:.0} ms", y * 1000.0)
            } else {
                format!("{y:.1} s")
            }
        })
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Grouped bars: one group per `groups` entry, one bar per series in each.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        * 1.15;
    let axis = ValueAxis {
        label: y_label,
        format: None,
        floor: 0.0,
        legend: SeriesLabelPosition::UpperRight,
    };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    draw_grouped(&root, title, groups, series, 0.0..y_max.max(1.0), &axis)
}

/// Grouped bars on a logarithmic value axis, for values spanning decades
/// (build times from a cached rebuild to a gigabyte of data).
pub fn grouped_bars_log(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let values = || {
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| *v > 0.0)
    };
    let (y_min, y_max) = (
        values().fold(f64::MAX, f64::min),
        values().fold(0.0f64, f64::max),
    );
    if y_max <= 0.0 {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    let floor = y_min * 0.5;
    let format = |y: &f64| {
        if *y < 1.0 {
            format!("{y:.2}")
        } else {
            format!("{y:.0}")
        }
    };
    let axis = ValueAxis {
        label: y_label,
        format: Some(&format),
        floor,
        legend: SeriesLabelPosition::UpperLeft,
    };
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    draw_grouped(&root, title, groups, series, (floor..y_max * 3.0).log_scale(), &axis)
}

/// The value axis of a bar chart, and where its legend goes.
struct ValueAxis<'a> {
    label: &'a str,
    /// Tick labels; plotters' own when `None`.
    format: Option<&'a dyn Fn(&f64) -> String>,
    /// Where bars start (0 on a linear axis, below the smallest on a log one).
    floor: f64,
    legend: SeriesLabelPosition,
}

/// Draws grouped bars (groups along x, one bar per series) on `y`; values
/// not above the floor are left out.
fn draw_grouped<Y>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    y: Y,
    axis: &ValueAxis<'_>,
) -> Result<()>
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, y)
        .map_err(|e| anyhow!("{e}"))?;
    // Each group's name under the middle of its bars.
    let names = |x: &f64| {
        let centre = x - x.floor();
        if (centre - 0.5).abs() < 0.01 {
            groups.get(x.floor() as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&names)
        .y_desc(axis.label);
    if let Some(format) = axis.format {
        mesh.y_label_formatter(format);
    }
    mesh.draw().map_err(|e| anyhow!("{e}"))?;
    let width = 0.8 / series.len().max(1) as f64;
    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let bars = values.iter().enumerate().filter(|(_, v)| **v > axis.floor).map(|(g, &v)| {
            let left = g as f64 + 0.1 + i as f64 * width;
            Rectangle::new([(left, axis.floor), (left + width * 0.95, v)], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(axis.legend.clone())
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_bars_name_every_group_and_series() {
        let dir = tempfile::tempdir().unwrap();
        let groups = vec!["small-app".to_string(), "big-data".to_string()];
        let series = vec![("strata".to_string(), vec![0.2, 7.5]), ("buildah".to_string(), vec![1.4, 9.0])];
        for (name, log) in [("linear.svg", false), ("log.svg", true)] {
            let path = dir.path().join(name);
            if log {
                grouped_bars_log(&path, "builds", "seconds", &groups, &series).unwrap();
            } else {
                grouped_bars(&path, "builds", "seconds", &groups, &series).unwrap();
            }
            let svg = std::fs::read_to_string(&path).unwrap();
            for label in ["builds", "seconds", "small-app", "big-data", "strata", "buildah"] {
                assert!(svg.contains(label), "{name} lacks {label}");
            }
            assert!(svg.matches("<rect").count() >= 6, "{name}: four bars and two legend boxes at least");
        }
    }
}
