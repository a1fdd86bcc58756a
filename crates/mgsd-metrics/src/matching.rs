//! Optimal one-to-one assignment (the Hungarian method), as `scipy.optimize.linear_sum_assignment`
//! computes it: minimum total cost over assignments of `min(rows, cols)` pairs.

/// Minimum-cost assignment of a `rows × cols` cost matrix (row-major): the `(row, col)` pairs,
/// one per row if `rows <= cols`, else one per column, sorted by row.
///
/// # Panics
/// If `cost.len() != rows * cols` or a cost is not finite (a programming error).
pub fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    assert_eq!(cost.len(), rows * cols, "linear_sum_assignment: cost matrix size");
    assert!(cost.iter().all(|c| c.is_finite()), "linear_sum_assignment: non-finite cost");
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    if rows > cols {
        let t: Vec<f64> = (0..cols * rows).map(|i| cost[(i % rows) * cols + i / rows]).collect();
        let mut pairs: Vec<(usize, usize)> =
            hungarian(&t, cols, rows).into_iter().map(|(c, r)| (r, c)).collect();
        pairs.sort_unstable();
        return pairs;
    }
    hungarian(cost, rows, cols)
}

/// Shortest augmenting paths with potentials, `n <= m` (Kuhn–Munkres, O(n²m)).
fn hungarian(a: &[f64], n: usize, m: usize) -> Vec<(usize, usize)> {
    // 1-based arrays, column 0 is the virtual start.
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut p = vec![0usize; m + 1]; // p[j]: row matched to column j
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if used[j] {
                    continue;
                }
                let cur = a[(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> =
        (1..=m).filter(|&j| p[j] != 0).map(|j| (p[j] - 1, j - 1)).collect();
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(cost: &[f64], cols: usize, pairs: &[(usize, usize)]) -> f64 {
        pairs.iter().map(|&(r, c)| cost[r * cols + c]).sum()
    }

    /// Brute force over all injective maps of the smaller side.
    fn best(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn rec(cost: &[f64], rows: usize, cols: usize, r: usize, used: &mut Vec<bool>) -> f64 {
            if r == rows {
                return 0.0;
            }
            let mut b = f64::INFINITY;
            for c in 0..cols {
                if !used[c] {
                    used[c] = true;
                    b = b.min(cost[r * cols + c] + rec(cost, rows, cols, r + 1, used));
                    used[c] = false;
                }
            }
            b
        }
        if rows <= cols {
            rec(cost, rows, cols, 0, &mut vec![false; cols])
        } else {
            let t: Vec<f64> =
                (0..cols * rows).map(|i| cost[(i % rows) * cols + i / rows]).collect();
            rec(&t, cols, rows, 0, &mut vec![false; rows])
        }
    }

    #[test]
    fn optimal_on_random_matrices() {
        let mut state = 7u64;
        for (rows, cols) in [(1, 1), (2, 3), (3, 2), (4, 4), (5, 3), (3, 6)] {
            for _ in 0..20 {
                let cost: Vec<f64> = (0..rows * cols)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 33) % 1000) as f64 / 1000.0
                    })
                    .collect();
                let pairs = linear_sum_assignment(&cost, rows, cols);
                assert_eq!(pairs.len(), rows.min(cols));
                let mut rs: Vec<usize> = pairs.iter().map(|p| p.0).collect();
                let mut cs: Vec<usize> = pairs.iter().map(|p| p.1).collect();
                rs.dedup();
                cs.sort_unstable();
                cs.dedup();
                assert_eq!((rs.len(), cs.len()), (pairs.len(), pairs.len()));
                assert!((total(&cost, cols, &pairs) - best(&cost, rows, cols)).abs() < 1e-12);
            }
        }
        assert!(linear_sum_assignment(&[], 0, 3).is_empty());
    }
}
