//! Connected components of a 3-D binary mask.
//!
//! The official BraTS 2023+ evaluation (`brats-evaluation` → panoptica's
//! `ConnectedComponentsInstanceApproximator`) labels instances with `cc3d.connected_components`
//! at its default, 26-connectivity: voxels touching by a face, an edge or a corner belong to the
//! same lesion. [`Connectivity::Six`] (faces only, scipy's default) is there for comparison.
//!
//! Labels are numbered 1, 2, … in the order their first voxel appears in memory order; 0 is
//! background.

/// Which neighbours touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// Faces only (6 neighbours).
    Six,
    /// Faces, edges and corners (26 neighbours): the official BraTS tool's choice.
    #[default]
    TwentySix,
}

/// A labelled mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// One label per voxel: 0 background, 1..=count the components.
    pub labels: Vec<u32>,
    /// Voxels of each component; `sizes[l - 1]` for label `l`.
    pub sizes: Vec<usize>,
}

impl Components {
    /// Number of components.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }
}

/// Labels the connected components of `mask` (C-contiguous over `shape`).
///
/// # Panics
/// If `mask.len()` is not the product of `shape` (a programming error).
pub fn connected_components(
    mask: &[bool],
    shape: [usize; 3],
    connectivity: Connectivity,
) -> Components {
    let [n0, n1, n2] = shape;
    assert_eq!(mask.len(), n0 * n1 * n2, "connected_components: mask does not match {shape:?}");
    // Neighbours already visited in memory order (negative offsets).
    let back: Vec<[isize; 3]> = match connectivity {
        Connectivity::Six => vec![[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
        Connectivity::TwentySix => {
            let mut v = Vec::with_capacity(13);
            for di in -1isize..=1 {
                for dj in -1isize..=1 {
                    for dk in -1isize..=1 {
                        if (di, dj, dk) < (0, 0, 0) {
                            v.push([di, dj, dk]);
                        }
                    }
                }
            }
            v
        }
    };
    let mut provisional = vec![0u32; mask.len()];
    let mut parent: Vec<u32> = vec![0]; // index 0 unused (background)
    for i in 0..n0 {
        for j in 0..n1 {
            for k in 0..n2 {
                let idx = (i * n1 + j) * n2 + k;
                if !mask[idx] {
                    continue;
                }
                let mut label = 0u32;
                for d in &back {
                    let (ni, nj, nk) = (i as isize + d[0], j as isize + d[1], k as isize + d[2]);
                    if ni < 0 || nj < 0 || nk < 0 || nj >= n1 as isize || nk >= n2 as isize {
                        continue;
                    }
                    let nidx = (ni as usize * n1 + nj as usize) * n2 + nk as usize;
                    let l = provisional[nidx];
                    if l == 0 {
                        continue;
                    }
                    if label == 0 {
                        label = find(&mut parent, l);
                    } else {
                        union(&mut parent, label, l);
                        label = find(&mut parent, label);
                    }
                }
                if label == 0 {
                    label = parent.len() as u32;
                    parent.push(label);
                }
                provisional[idx] = label;
            }
        }
    }
    // Final labels in order of first appearance.
    let mut remap = vec![0u32; parent.len()];
    let mut sizes = Vec::new();
    for l in provisional.iter_mut() {
        if *l == 0 {
            continue;
        }
        let root = find(&mut parent, *l) as usize;
        if remap[root] == 0 {
            sizes.push(0);
            remap[root] = sizes.len() as u32;
        }
        *l = remap[root];
        sizes[*l as usize - 1] += 1;
    }
    Components { labels: provisional, sizes }
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = p;
    }
    x
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        // Keep the smaller root: stable and cheap.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(shape: [usize; 3], on: &[[usize; 3]]) -> Vec<bool> {
        let mut m = vec![false; shape.iter().product()];
        for p in on {
            m[(p[0] * shape[1] + p[1]) * shape[2] + p[2]] = true;
        }
        m
    }

    #[test]
    fn corners_touch_only_with_26_connectivity() {
        let shape = [3, 3, 3];
        let m = mask(shape, &[[0, 0, 0], [1, 1, 1], [2, 2, 0]]);
        let c26 = connected_components(&m, shape, Connectivity::TwentySix);
        assert_eq!(c26.count(), 1);
        assert_eq!(c26.sizes, vec![3]);
        let c6 = connected_components(&m, shape, Connectivity::Six);
        assert_eq!(c6.count(), 3);
    }

    #[test]
    fn u_shape_merges_late() {
        // Two arms that meet only at the bottom: provisional labels must be merged.
        let shape = [1, 4, 3];
        let m = mask(
            shape,
            &[[0, 0, 0], [0, 0, 2], [0, 1, 0], [0, 1, 2], [0, 2, 0], [0, 2, 1], [0, 2, 2]],
        );
        let c = connected_components(&m, shape, Connectivity::Six);
        assert_eq!(c.count(), 1);
        assert_eq!(c.labels.iter().filter(|&&l| l == 1).count(), 7);
    }

    #[test]
    fn brute_force_agreement() {
        // Flood fill on random masks as the reference.
        let shape = [6, 7, 5];
        let n: usize = shape.iter().product();
        let mut state = 99u64;
        for conn in [Connectivity::Six, Connectivity::TwentySix] {
            for density in [10u64, 30, 50] {
                let m: Vec<bool> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (state >> 33) % 100 < density
                    })
                    .collect();
                let c = connected_components(&m, shape, conn);
                let mut seen = vec![0u32; n];
                let mut next = 0u32;
                for start in 0..n {
                    if !m[start] || seen[start] != 0 {
                        continue;
                    }
                    next += 1;
                    let mut stack = vec![start];
                    seen[start] = next;
                    while let Some(v) = stack.pop() {
                        let p =
                            [v / (shape[1] * shape[2]), (v / shape[2]) % shape[1], v % shape[2]];
                        for w in 0..n {
                            let q = [
                                w / (shape[1] * shape[2]),
                                (w / shape[2]) % shape[1],
                                w % shape[2],
                            ];
                            let d: Vec<usize> = (0..3).map(|a| p[a].abs_diff(q[a])).collect();
                            let adjacent = match conn {
                                Connectivity::Six => d.iter().sum::<usize>() == 1,
                                Connectivity::TwentySix => d.iter().all(|&x| x <= 1) && w != v,
                            };
                            if adjacent && m[w] && seen[w] == 0 {
                                seen[w] = next;
                                stack.push(w);
                            }
                        }
                    }
                }
                // Same labels (both number components by first appearance).
                assert_eq!(c.labels, seen, "{conn:?} density {density}");
            }
        }
    }
}
