//! Pictures without a plotting library: an RGB canvas with lines, rectangles and a built-in 5×7
//! bitmap font, written with the `png` crate. Used for the training curves (`curves.png`) and
//! the segmentation preview of `predict`.

use anyhow::{Context, Result};
use std::path::Path;

/// An RGB image.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB bytes.
    pub rgb: Vec<u8>,
}

/// An RGB colour.
pub type Rgb = [u8; 3];

/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// Light grey (grid lines).
pub const GREY: Rgb = [210, 210, 210];

impl Canvas {
    /// A canvas filled with `bg`.
    pub fn new(width: usize, height: usize, bg: Rgb) -> Self {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            rgb.extend_from_slice(&bg);
        }
        Canvas { width, height, rgb }
    }

    /// Sets a pixel (ignored outside the canvas).
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Blends `c` over a pixel with opacity `alpha`.
    pub fn blend(&mut self, x: usize, y: usize, c: Rgb, alpha: f32) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(&c) {
                let v = *dst as f32 * (1.0 - alpha) + src as f32 * alpha;
                *dst = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// A line (Bresenham).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A rectangle outline.
    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        self.line((x, y), (x + w - 1, y), c);
        self.line((x, y + h - 1), (x + w - 1, y + h - 1), c);
        self.line((x, y), (x, y + h - 1), c);
        self.line((x + w - 1, y), (x + w - 1, y + h - 1), c);
    }

    /// A filled rectangle.
    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// Text in the built-in 5×7 font at `scale` (upper case; unknown characters as boxes).
    /// Returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) -> i64 {
        let mut cx = x;
        for ch in s.chars() {
            if let Some(g) = glyph(ch) {
                for (row, bits) in g.iter().enumerate() {
                    for col in 0..5 {
                        if bits >> (4 - col) & 1 == 1 {
                            self.fill(cx + col * scale, y + row as i64 * scale, scale, scale, c);
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
        cx - x
    }

    /// Writes the canvas as an 8-bit RGB PNG.
    ///
    /// # Errors
    /// I/O or encoding errors naming the file.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut enc =
            png::Encoder::new(std::io::BufWriter::new(f), self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().with_context(|| format!("writing {}", path.display()))?;
        w.write_image_data(&self.rgb).with_context(|| format!("writing {}", path.display()))?;
        w.finish().with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The 5×7 glyph of `c` (rows top to bottom, 5 bits each, MSB left).
fn glyph(c: char) -> Option<[u8; 7]> {
    let c = c.to_ascii_uppercase();
    Some(match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '*' => [0, 0x15, 0x0E, 0x1F, 0x0E, 0x15, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    })
}

/// A short number for axis labels: `0.123`, `12.3`, `1.2E-5`.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}").to_uppercase()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel's data: a name and `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Label drawn in the panel.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
}

/// Draws each series in its own panel (two columns), raw values in a light colour and an
/// exponential moving average (window ≈ 5 % of the points) in a dark one, with the name and the
/// y range written in the panel.
pub fn curves(series: &[Series]) -> Canvas {
    const PW: usize = 420;
    const PH: usize = 170;
    const PALETTE: [Rgb; 6] = [
        [31, 119, 180],
        [214, 39, 40],
        [44, 160, 44],
        [148, 103, 189],
        [255, 127, 14],
        [23, 190, 207],
    ];
    let cols = 2;
    let rows = series.len().div_ceil(cols).max(1);
    let mut cv = Canvas::new(PW * cols, PH * rows, WHITE);
    for (n, s) in series.iter().enumerate() {
        let (ox, oy) = ((n % cols * PW) as i64, (n / cols * PH) as i64);
        let (l, t, w, h) = (ox + 8, oy + 24, PW as i64 - 16, PH as i64 - 34);
        cv.rect(l, t, w, h, GREY);
        let pts: Vec<(f64, f64)> =
            s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        let dark = PALETTE[n % PALETTE.len()];
        let light = dark.map(|c| (c as u16 + (255 - c as u16) * 2 / 3) as u8);
        if pts.is_empty() {
            cv.text(l + 4, oy + 6, &format!("{} (NO DATA)", s.name), 2, BLACK);
            continue;
        }
        let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        // A flat series (up to rounding) is drawn in the middle of the panel.
        let flat = (y1 - y0) <= 1e-9 * y0.abs().max(y1.abs()).max(1e-30);
        let (y0, y1) = if flat { (y0 - 1.0, y1 + 1.0) } else { (y0, y1) };
        let (xr, yr) = ((x1 - x0).max(1e-12), y1 - y0);
        let px = |x: f64| l + 1 + ((x - x0) / xr * (w - 3) as f64).round() as i64;
        let py = |y: f64| t + h - 2 - ((y - y0) / yr * (h - 3) as f64).round() as i64;
        let draw = |cv: &mut Canvas, p: &[(f64, f64)], c: Rgb| {
            if p.len() == 1 {
                cv.fill(px(p[0].0) - 1, py(p[0].1) - 1, 3, 3, c);
            }
            for win in p.windows(2) {
                cv.line((px(win[0].0), py(win[0].1)), (px(win[1].0), py(win[1].1)), c);
            }
        };
        draw(&mut cv, &pts, light);
        if pts.len() > 20 {
            let a = 1.0 / (pts.len() as f64 * 0.05).max(1.0);
            let mut m = pts[0].1;
            let smooth: Vec<(f64, f64)> = pts
                .iter()
                .map(|&(x, y)| {
                    m += a * (y - m);
                    (x, m)
                })
                .collect();
            draw(&mut cv, &smooth, dark);
        } else {
            draw(&mut cv, &pts, dark);
        }
        let (lo, hi) = if flat { (y0 + 1.0, y1 - 1.0) } else { (y0, y1) };
        let wname = cv.text(l + 2, oy + 6, &s.name, 2, BLACK);
        let range = format!(
            "{} .. {}   LAST {}",
            short_number(lo),
            short_number(hi),
            short_number(pts[pts.len() - 1].1)
        );
        cv.text(l + 2 + wname + 12, oy + 10, &range, 1, BLACK);
        cv.text(l + 2, t + h + 2, &short_number(x0), 1, BLACK);
        let xl = short_number(x1);
        cv.text(l + w - 6 * xl.len() as i64 - 2, t + h + 2, &xl, 1, BLACK);
    }
    cv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_and_saves() {
        let s = vec![
            Series {
                name: "total".into(),
                points: (0..100).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect(),
            },
            Series { name: "empty".into(), points: vec![] },
            Series { name: "one".into(), points: vec![(1.0, f64::NAN), (2.0, 3.0)] },
        ];
        let cv = curves(&s);
        assert_eq!(cv.rgb.len(), cv.width * cv.height * 3);
        assert!(cv.rgb.iter().any(|&b| b < 100));
        let dir = tempfile::tempdir().unwrap();
        cv.save_png(&dir.path().join("c.png")).unwrap();
        assert_eq!(short_number(0.00001234), "1.2E-5");
        assert_eq!(short_number(12.345), "12.35");
    }
}
