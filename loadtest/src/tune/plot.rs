//! `--plot FILE.svg`: latency percentiles against throughput, one colour per batch setting: p99 as a line
//! through the rates that held, a cross for each rate that missed (clipped at the top of the chart), p50 as
//! rings, and the SLO limit drawn across. Drawn with plotters' SVG backend, whose text needs no font
//! files.

use std::path::Path;

use plotters::prelude::*;

use super::{SettingResult, Trial};
use crate::error::Error;

/// Draws the curves of every setting's trials.
///
/// # Errors
/// [`Error::Plot`] when the file cannot be written.
pub fn draw(path: &Path, settings: &[SettingResult], slo_label: &str, limit_ms: Option<f64>) -> Result<(), Error> {
    draw_inner(path, settings, slo_label, limit_ms)
        .map_err(|e| Error::Plot { path: path.to_path_buf(), message: e.to_string() })
}

/// (throughput, latency, sustainable) of the trials that recorded latency, in the order of offered rate.
fn points(trials: &[Trial], pick: fn(&Trial) -> f64, y_max: f64) -> Vec<(f64, f64, bool)> {
    let mut trials: Vec<&Trial> = trials.iter().filter(|t| t.latency.count > 0).collect();
    trials.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    trials.iter().map(|t| (t.throughput_rps, pick(t).min(y_max), t.sustainable)).collect()
}

fn draw_inner(
    path: &Path,
    settings: &[SettingResult],
    slo_label: &str,
    limit_ms: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let trials = || settings.iter().flat_map(|s| s.trials.iter()).filter(|t| t.latency.count > 0);
    let x_max = trials().map(|t| t.throughput_rps).fold(1.0, f64::max) * 1.05;
    let observed = trials().map(|t| t.latency.p99_ms).fold(1.0, f64::max);
    // Overloaded trials run far past the limit; cap the axis so the curves near the limit stay readable.
    let y_max = limit_ms.map_or(observed, |l| observed.min(2.0 * l).max(1.2 * l)) * 1.05;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("latency against throughput (SLO {slo_label})"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("throughput (requests/s)")
        .y_desc("latency (ms): p99 of rates that hold (line), that miss (x); p50 (rings)")
        .draw()?;
    if let Some(limit) = limit_ms {
        chart
            .draw_series(LineSeries::new([(0.0, limit), (x_max, limit)], RED.stroke_width(1)))?
            .label(format!("SLO {slo_label}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    }
    for (i, setting) in settings.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let p99 = points(&setting.trials, |t| t.latency.p99_ms, y_max);
        let held: Vec<(f64, f64)> = p99.iter().filter(|p| p.2).map(|&(x, y, _)| (x, y)).collect();
        chart
            .draw_series(LineSeries::new(held.iter().copied(), colour.stroke_width(2)))?
            .label(setting.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        chart.draw_series(held.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        let missed = p99.iter().filter(|p| !p.2).map(|&(x, y, _)| Cross::new((x, y), 4, colour.stroke_width(1)));
        chart.draw_series(missed)?;
        let p50 = points(&setting.trials, |t| t.latency.p50_ms, y_max);
        let p50_held = p50.iter().filter(|p| p.2).map(|&(x, y, _)| Circle::new((x, y), 2, colour.stroke_width(1)));
        chart.draw_series(p50_held)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
