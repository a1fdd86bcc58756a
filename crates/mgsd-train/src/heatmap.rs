//! The 15 × 3 table as a heatmap PNG: one row per modality subset (sorted by number of
//! modalities, then in the literature's order), one column per region (WT, TC, ET), the value
//! printed in every cell. `eval` draws the Dice table, `compare` the mean differences.

use crate::plot::{Canvas, Rgb, BLACK, GREY, WHITE};
use mgsd_io::ModalitySet;

/// How values map to colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// From white (`min`) to dark green (`max`), for scores.
    Sequential {
        /// Value drawn white.
        min: f64,
        /// Value drawn darkest.
        max: f64,
    },
    /// Blue below 0, red above, white at 0; `limit` is the darkest magnitude.
    Diverging {
        /// Magnitude drawn darkest.
        limit: f64,
    },
}

/// One row of the heatmap.
#[derive(Debug, Clone)]
pub struct HeatRow {
    /// Subset name (`FLAIR+T1ce`, …); rows that do not parse as a subset sort last.
    pub label: String,
    /// Values of WT, TC, ET.
    pub values: [f64; 3],
    /// Text printed in each cell.
    pub text: [String; 3],
}

/// Rows sorted by number of modalities, ties kept in their given order.
pub fn sort_by_modalities(rows: &mut [HeatRow]) {
    rows.sort_by_key(|r| r.label.parse::<ModalitySet>().map_or(usize::MAX, |s| s.len()));
}

fn mix(a: Rgb, b: Rgb, t: f64) -> Rgb {
    let t = t.clamp(0.0, 1.0);
    [0, 1, 2].map(|i| (a[i] as f64 * (1.0 - t) + b[i] as f64 * t).round() as u8)
}

fn colour(v: f64, scale: Scale) -> Rgb {
    if !v.is_finite() {
        return GREY;
    }
    match scale {
        Scale::Sequential { min, max } => {
            let t = if max > min { (v - min) / (max - min) } else { 0.5 };
            mix(WHITE, [27, 120, 55], t)
        }
        Scale::Diverging { limit } => {
            let t = if limit > 0.0 { v / limit } else { 0.0 };
            if t < 0.0 {
                mix(WHITE, [33, 102, 172], -t)
            } else {
                mix(WHITE, [178, 24, 43], t)
            }
        }
    }
}

/// Draws the heatmap with `title` above it.
pub fn heatmap(title: &str, rows: &[HeatRow], scale: Scale) -> Canvas {
    let (cell_w, cell_h, label_w, top) = (130i64, 26i64, 190i64, 64i64);
    let width = (label_w + 3 * cell_w + 20) as usize;
    let height = (top + cell_h * rows.len() as i64 + 20) as usize;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(10, 10, title, 2, BLACK);
    for (i, name) in ["WT", "TC", "ET"].iter().enumerate() {
        c.text(label_w + i as i64 * cell_w + cell_w / 2 - 12, top - 22, name, 2, BLACK);
    }
    for (r, row) in rows.iter().enumerate() {
        let y = top + r as i64 * cell_h;
        c.text(10, y + 6, &row.label, 2, BLACK);
        for i in 0..3 {
            let x = label_w + i as i64 * cell_w;
            let bg = colour(row.values[i], scale);
            c.fill(x, y, cell_w, cell_h, bg);
            c.rect(x, y, cell_w, cell_h, GREY);
            // Dark cells get white text.
            let lum = 0.299 * bg[0] as f64 + 0.587 * bg[1] as f64 + 0.114 * bg[2] as f64;
            let fg = if lum < 128.0 { WHITE } else { BLACK };
            let w = 12 * row.text[i].chars().count() as i64;
            c.text(x + (cell_w - w) / 2, y + 6, &row.text[i], 2, fg);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_number_of_modalities() {
        let row = |l: &str| HeatRow { label: l.into(), values: [0.5; 3], text: Default::default() };
        let mut rows = vec![row("FLAIR+T1+T1ce+T2"), row("T1"), row("FLAIR+T2"), row("mean")];
        sort_by_modalities(&mut rows);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["T1", "FLAIR+T2", "FLAIR+T1+T1ce+T2", "mean"]);
        let img = heatmap("DICE", &rows, Scale::Sequential { min: 0.0, max: 1.0 });
        assert_eq!(img.width, 190 + 390 + 20);
        assert_ne!(
            colour(-1.0, Scale::Diverging { limit: 1.0 }),
            colour(1.0, Scale::Diverging { limit: 1.0 })
        );
    }
}
