//! The segmentation preview of `predict`: axial, coronal and sagittal slices through the
//! tumour's centre of mass, drawn at their physical aspect (square millimetres, whatever the
//! voxel size), grey levels from one scan with the labels overlaid, and a legend.
//!
//! Orientation comes from the affine: each view's axes are the voxel axes closest to the world
//! axes (RAS+), drawn with the patient's right on the image's right (neurological convention),
//! superior and anterior up.

use crate::plot::{Canvas, Rgb, BLACK, WHITE};
use anyhow::{bail, Result};
use mgsd_io::labels::{EDEMA, ENHANCING, NCR_NET};
use mgsd_io::{Grid, Volume};

/// Longest side of a view, in pixels.
const VIEW_PX: f64 = 256.0;
/// Space between and around views, in pixels.
const GAP: usize = 8;
/// Height of the title band above the views.
const TITLE_BAND: usize = 30;
/// Height of the legend band below the views.
const LEGEND_BAND: usize = 28;

/// Overlay colours and legend names, in legend order.
pub const LEGEND: [(u8, Rgb, &str); 3] = [
    (EDEMA, [40, 200, 40], "OEDEMA"),
    (NCR_NET, [230, 40, 40], "NECROTIC CORE"),
    (ENHANCING, [255, 220, 0], "ENHANCING"),
];

/// Where one view was drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    /// `AXIAL`, `CORONAL` or `SAGITTAL`.
    pub title: String,
    /// Left edge of the image (pixels).
    pub x: usize,
    /// Top edge of the image (pixels).
    pub y: usize,
    /// Image width (pixels).
    pub width: usize,
    /// Image height (pixels).
    pub height: usize,
    /// Width of the title as drawn (pixels); never more than the space given to the view.
    pub title_width: usize,
    /// Space given to the view (image or title, whichever is wider).
    pub slot: usize,
}

/// The drawn preview and its layout (for tests and callers that annotate it).
#[derive(Debug, Clone)]
pub struct Preview {
    /// The picture.
    pub canvas: Canvas,
    /// The three views, left to right.
    pub tiles: Vec<Tile>,
    /// The voxel the three planes go through.
    pub centre: [usize; 3],
}

fn label_colour(l: u8) -> Option<Rgb> {
    LEGEND.iter().find(|(v, _, _)| *v == l).map(|(_, c, _)| *c)
}

/// For each world axis (x, y, z), the voxel axis closest to it and whether the voxel index
/// grows along the world axis. Falls back to the voxel order when the grid is so oblique that
/// two voxel axes are closest to one world axis.
fn world_axes(grid: &Grid) -> [(usize, bool); 3] {
    const VOXEL_ORDER: [(usize, bool); 3] = [(0, true), (1, true), (2, true)];
    let closest = |a: usize| {
        let col = [0, 1, 2].map(|r| grid.affine[r][a].abs());
        (0..3).max_by(|&i, &j| col[i].total_cmp(&col[j])).unwrap_or(a)
    };
    let w = [0, 1, 2].map(closest);
    if w[0] == w[1] || w[1] == w[2] || w[0] == w[2] {
        return VOXEL_ORDER;
    }
    let mut out = VOXEL_ORDER;
    for a in 0..3 {
        out[w[a]] = (a, grid.affine[w[a]][a] >= 0.0);
    }
    out
}

/// 1st and 99th percentile of the non-zero finite voxels.
fn intensity_window(vol: &Volume) -> (f32, f32) {
    let mut v: Vec<f32> = vol.data.iter().copied().filter(|x| *x != 0.0 && x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_unstable_by(f32::total_cmp);
    (v[v.len() / 100], v[(v.len() * 99) / 100])
}

/// The labelled voxels' centre of mass (rounded), or the volume's centre when nothing is
/// labelled.
pub fn centre_of_mass(labels: &[u8], shape: [usize; 3]) -> [usize; 3] {
    let [_, ny, nz] = shape;
    let (mut c, mut n) = ([0f64; 3], 0usize);
    for (idx, _) in labels.iter().enumerate().filter(|(_, l)| **l != 0) {
        c[0] += (idx / (ny * nz)) as f64;
        c[1] += (idx / nz % ny) as f64;
        c[2] += (idx % nz) as f64;
        n += 1;
    }
    if n == 0 {
        return shape.map(|s| s / 2);
    }
    [0, 1, 2].map(|a| ((c[a] / n as f64).round() as usize).min(shape[a] - 1))
}

/// Draws the preview of `labels` (canonical 0/1/2/4, on `grey`'s grid) over `grey`.
///
/// # Errors
/// `labels` not matching `grey`'s voxels.
pub fn preview(grey: &Volume, labels: &[u8]) -> Result<Preview> {
    if labels.len() != grey.len() || grey.is_empty() {
        bail!(
            "preview: {} labels for a {:?} volume ({} voxels)",
            labels.len(),
            grey.shape,
            grey.len()
        );
    }
    let grid = Grid::of(grey);
    let spacing = grid.spacing().map(|s| if s.is_finite() && s > 0.0 { s } else { 1.0 });
    let extent = [0, 1, 2].map(|a| grey.shape[a] as f64 * spacing[a]);
    let mm_per_px = extent.iter().fold(0.0f64, |m, &e| m.max(e)) / VIEW_PX;
    let [wx, wy, wz] = world_axes(&grid);
    // (title, horizontal axis, vertical axis, fixed axis).
    let views = [("AXIAL", wx, wy, wz.0), ("CORONAL", wx, wz, wy.0), ("SAGITTAL", wy, wz, wx.0)];
    let centre = centre_of_mass(labels, grey.shape);
    let px = |a: usize| ((extent[a] / mm_per_px).round() as usize).max(1);

    let mut tiles = Vec::new();
    let mut x = GAP;
    for (title, (ha, _), (va, _), _) in views {
        let (width, height) = (px(ha), px(va));
        let scale = if title.len() * 12 <= width { 2 } else { 1 };
        let title_width = title.len() * 6 * scale;
        let slot = width.max(title_width);
        tiles.push(Tile {
            title: title.into(),
            x,
            y: TITLE_BAND,
            width,
            height,
            title_width,
            slot,
        });
        x += slot + GAP;
    }
    let legend_width: usize =
        LEGEND.iter().map(|(_, _, name)| 14 + name.len() * 6 + 16).sum::<usize>() + GAP;
    let width = x.max(legend_width + GAP);
    let views_height = tiles.iter().map(|t| t.height).max().unwrap_or(1);
    let height = TITLE_BAND + views_height + LEGEND_BAND;
    let mut cv = Canvas::new(width, height, BLACK);

    let (lo, hi) = intensity_window(grey);
    let [_, ny, nz] = grey.shape;
    for (tile, (_, (ha, h_up), (va, v_up), fa)) in tiles.iter().zip(views) {
        let scale = if tile.title_width > tile.title.len() * 6 { 2 } else { 1 };
        cv.text(tile.x as i64, 6, &tile.title, scale as i64, WHITE);
        for v in 0..tile.height {
            for u in 0..tile.width {
                let index = |p: usize, a: usize, grows: bool| {
                    let i = (((p as f64 + 0.5) * mm_per_px / spacing[a]) as usize)
                        .min(grey.shape[a] - 1);
                    if grows {
                        i
                    } else {
                        grey.shape[a] - 1 - i
                    }
                };
                let mut idx = [0usize; 3];
                idx[ha] = index(u, ha, h_up);
                // Screen rows grow downwards; superior / anterior goes up.
                idx[va] = index(tile.height - 1 - v, va, v_up);
                idx[fa] = centre[fa];
                let lin = (idx[0] * ny + idx[1]) * nz + idx[2];
                let g = grey.data[lin];
                let g = if g.is_finite() {
                    ((g - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let g = (g * 255.0) as u8;
                let (px, py) = (tile.x + u, tile.y + v);
                cv.set(px as i64, py as i64, [g, g, g]);
                if let Some(col) = label_colour(labels[lin]) {
                    cv.blend(px, py, col, 0.45);
                }
            }
        }
    }
    let mut lx = GAP as i64;
    let ly = (TITLE_BAND + views_height + 10) as i64;
    for (_, colour, name) in LEGEND {
        cv.fill(lx, ly, 10, 10, colour);
        lx += 14;
        lx += cv.text(lx, ly + 2, name, 1, WHITE) + 16;
    }
    Ok(Preview { canvas: cv, tiles, centre })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(shape: [usize; 3], spacing: [f64; 3]) -> Volume {
        let n = shape.iter().product();
        let mut v = Volume::new((0..n).map(|i| (i % 50) as f32 + 1.0).collect(), shape).unwrap();
        for (a, s) in spacing.iter().enumerate() {
            v.affine[a][a] = *s;
        }
        v.spacing = spacing.map(|s| s as f32);
        v
    }

    #[test]
    fn views_have_their_physical_aspect() {
        // 40 × 40 × 10 voxels of 1 × 1 × 4 mm: every view is a 40 mm square.
        let v = volume([40, 40, 10], [1.0, 1.0, 4.0]);
        let p = preview(&v, &vec![0; v.len()]).unwrap();
        for t in &p.tiles {
            assert_eq!(t.width, t.height, "{t:?}");
        }
        // The same voxels drawn at 1 mm would give 40 × 10 coronal and sagittal views.
        let flat = volume([40, 40, 10], [1.0, 1.0, 1.0]);
        let p = preview(&flat, &vec![0; flat.len()]).unwrap();
        assert_eq!((p.tiles[1].width, p.tiles[1].height), (256, 64));
    }

    #[test]
    fn titles_fit_and_the_legend_is_drawn_on_tiny_volumes() {
        let v = volume([3, 3, 2], [1.0, 1.0, 1.0]);
        let mut labels = vec![0; v.len()];
        labels[4] = ENHANCING;
        let p = preview(&v, &labels).unwrap();
        for (i, t) in p.tiles.iter().enumerate() {
            assert!(t.title_width <= t.slot);
            if let Some(next) = p.tiles.get(i + 1) {
                assert!(t.x + t.slot < next.x, "titles overlap: {:?}", p.tiles);
            }
        }
        assert!(p.tiles.last().map_or(0, |t| t.x + t.slot) <= p.canvas.width);
        for (_, colour, _) in LEGEND {
            assert!(p.canvas.rgb.chunks(3).any(|px| px == colour), "legend colour {colour:?}");
        }
    }

    #[test]
    fn planes_go_through_the_tumour_and_follow_the_affine() {
        let mut v = volume([20, 16, 12], [1.0, 1.0, 1.0]);
        let mut labels = vec![0; v.len()];
        for idx in [(15, 3, 9), (17, 5, 9)] {
            labels[(idx.0 * 16 + idx.1) * 12 + idx.2] = EDEMA;
        }
        assert_eq!(preview(&v, &labels).unwrap().centre, [16, 4, 9]);
        // x and y swapped in storage: the axial view still shows world x across.
        v.affine = [
            [0.0, 2.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let p = preview(&v, &labels).unwrap();
        // World x spans 16 voxels × 2 mm = 32 mm, world y 20 mm: wider than tall.
        assert!(p.tiles[0].width > p.tiles[0].height, "{:?}", p.tiles[0]);
        assert!(preview(&v, &labels[1..]).is_err());
    }
}
