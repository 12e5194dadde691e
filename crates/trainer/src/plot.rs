//! The loss curve as a PNG, drawn without any text so that no font is
//! needed: a light grid (5 divisions each way), the raw per-step loss in
//! light blue and its moving average in dark blue. The axis ranges are
//! written next to the image by the caller (log line / JSON), not in it.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Draws `losses` (step, loss) to `path` (written atomically: temp file in
/// the same directory, fsync, rename). Non-finite points are left out.
pub fn plot_loss_curve(path: &Path, losses: &[(u64, f64)]) -> Result<()> {
    let pts: Vec<(f64, f64)> = losses
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    if pts.is_empty() {
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
    draw(&tmp, &pts).map_err(|reason| Error::Plot {
        path: path.to_path_buf(),
        reason,
    })?;
    crate::fsutil::persist(&tmp, path)
}

fn draw(tmp: &Path, pts: &[(f64, f64)]) -> std::result::Result<(), String> {
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let area = BitMapBackend::new(tmp, (800, 480)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&area)
        .margin(20)
        .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .disable_x_axis()
        .disable_y_axis()
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|_| String::new())
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(220, 220, 220))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().copied(),
            RGBColor(150, 190, 240),
        ))
        .map_err(|e| e.to_string())?;
    let window = (pts.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..pts.len())
        .map(|i| {
            let from = i.saturating_sub(window - 1);
            let mean = pts[from..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - from) as f64;
            (pts[i].0, mean)
        })
        .collect();
    chart
        .draw_series(LineSeries::new(
            smooth,
            RGBColor(20, 60, 160).stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    area.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let losses: Vec<(u64, f64)> = (1..=50)
            .map(|s| (s, 5.0 / s as f64 + 0.1 * ((s % 3) as f64)))
            .collect();
        plot_loss_curve(&p, &losses).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR width and height, big-endian at offsets 16 and 20.
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 800);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 480);
        assert!(
            !dir.path().join(".tmp.loss.png").exists(),
            "temp file renamed away"
        );
    }

    #[test]
    fn no_finite_point_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = plot_loss_curve(&dir.path().join("x.png"), &[(1, f64::NAN)]).unwrap_err();
        assert!(e.to_string().contains("no finite loss"), "{e}");
    }
}
