//! The loss curve as a PNG: title, labelled axes with tick values, the raw
//! per-step training loss (light blue) and its moving average (dark blue),
//! the validation loss where evaluation ran (orange points), and the
//! learning rate on a second axis (grey, right).
//!
//! Text needs a font and a machine may have none: the DejaVu Sans Mono font
//! ships with the crate (`assets/`, licence in `assets/README.md`) and is
//! registered with plotters on first use.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// The bundled font, registered with plotters under [`FONT`].
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FONT: &str = "sans-serif";

/// What to draw: (step, value) series; `lr` and `validation` may be empty.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossCurve<'a> {
    /// Training loss per step.
    pub train: &'a [(u64, f64)],
    /// Learning rate per step (second axis).
    pub lr: &'a [(u64, f64)],
    /// Validation loss at the steps where evaluation ran.
    pub validation: &'a [(u64, f64)],
}

/// Draws `curve` to `path` (written atomically: temp file in the same
/// directory, fsync, rename). Non-finite points are left out.
pub fn plot_loss_curve(path: &Path, curve: &LossCurve<'_>) -> Result<()> {
    let finite = |s: &[(u64, f64)]| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(s, v)| (s as f64, v))
            .collect()
    };
    let (train, lr, val) = (
        finite(curve.train),
        finite(curve.lr),
        finite(curve.validation),
    );
    if train.is_empty() {
        return Err(Error::Plot {
            path: path.to_path_buf(),
            reason: "no finite loss to draw".into(),
        });
    }
    // The bitmap backend picks the encoder from the extension: keep ".png".
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".tmp.{name}"));
    let fail = |reason: String| Error::Plot {
        path: path.to_path_buf(),
        reason,
    };
    register_font().map_err(fail)?;
    draw(&tmp, &train, &lr, &val).map_err(fail)?;
    crate::fsutil::persist(&tmp, path)
}

fn register_font() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .map_err(|_| "the bundled font does not parse".to_string())
    })
    .clone()
}

fn range(pts: &[(f64, f64)]) -> (f64, f64) {
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
    (lo - pad, hi + pad)
}

fn draw(
    tmp: &Path,
    train: &[(f64, f64)],
    lr: &[(f64, f64)],
    val: &[(f64, f64)],
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let all_x = train.iter().chain(val).chain(lr).map(|p| p.0);
    let x0 = all_x.clone().fold(f64::INFINITY, f64::min);
    let x1 = all_x.fold(f64::NEG_INFINITY, f64::max).max(x0 + 1.0);
    let losses: Vec<(f64, f64)> = train.iter().chain(val).copied().collect();
    let (lo, hi) = range(&losses);
    let area = BitMapBackend::new(tmp, (800, 480)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&area);
    builder
        .caption("Training loss", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    if !lr.is_empty() {
        builder.right_y_label_area_size(72);
    }
    let chart = builder
        .build_cartesian_2d(x0..x1, lo..hi)
        .map_err(|e| err(&e))?;
    let (lr_lo, lr_hi) = if lr.is_empty() { (0.0, 1.0) } else { range(lr) };
    let mut chart = chart.set_secondary_coord(x0..x1, lr_lo.min(0.0)..lr_hi);
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss (cross-entropy, nats)")
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(|e| err(&e))?;
    let raw = RGBColor(150, 190, 240);
    chart
        .draw_series(LineSeries::new(train.iter().copied(), raw))
        .map_err(|e| err(&e))?
        .label("loss per step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], raw));
    let window = (train.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..train.len())
        .map(|i| {
            let from = i.saturating_sub(window - 1);
            let mean = train[from..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - from) as f64;
            (train[i].0, mean)
        })
        .collect();
    let dark = RGBColor(20, 60, 160);
    chart
        .draw_series(LineSeries::new(smooth, dark.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label(format!("moving average ({window} steps)"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], dark.stroke_width(2)));
    if !val.is_empty() {
        let orange = RGBColor(230, 120, 20);
        chart
            .draw_series(LineSeries::new(val.iter().copied(), orange.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("validation loss")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], orange.stroke_width(2))
            });
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 4, orange.filled())))
            .map_err(|e| err(&e))?;
    }
    if !lr.is_empty() {
        let grey = RGBColor(140, 140, 140);
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_labels(8)
            .y_label_formatter(&|y| format!("{y:.1e}"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_secondary_series(LineSeries::new(lr.iter().copied(), grey))
            .map_err(|e| err(&e))?
            .label("learning rate (right axis)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    area.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(p: &Path) -> (u32, u32) {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR width and height, big-endian at offsets 16 and 20.
        (
            u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
            u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
        )
    }

    #[test]
    fn writes_a_png_with_loss_lr_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let train: Vec<(u64, f64)> = (1..=50)
            .map(|s| (s, 5.0 / s as f64 + 0.1 * ((s % 3) as f64)))
            .collect();
        let lr: Vec<(u64, f64)> = (1..=50)
            .map(|s| (s, 1e-3 * (s.min(10) as f64) / 10.0))
            .collect();
        let validation = [(25, 0.6), (50, 0.4)];
        let plain = dir.path().join("plain.png");
        plot_loss_curve(
            &plain,
            &LossCurve {
                train: &train,
                ..Default::default()
            },
        )
        .unwrap();
        plot_loss_curve(
            &p,
            &LossCurve {
                train: &train,
                lr: &lr,
                validation: &validation,
            },
        )
        .unwrap();
        assert_eq!(pixels(&p), (800, 480));
        assert_ne!(
            std::fs::read(&p).unwrap(),
            std::fs::read(&plain).unwrap(),
            "the lr axis and validation points change the picture"
        );
        assert!(
            !dir.path().join(".tmp.loss.png").exists(),
            "temp file renamed away"
        );
    }

    #[test]
    fn no_finite_point_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let curve = LossCurve {
            train: &[(1, f64::NAN)],
            ..Default::default()
        };
        let e = plot_loss_curve(&dir.path().join("x.png"), &curve).unwrap_err();
        assert!(e.to_string().contains("no finite loss"), "{e}");
    }
}
