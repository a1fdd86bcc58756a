//! Statistics for comparing methods and summarising score tables.
//!
//! * [`wilcoxon`] — the paired Wilcoxon signed-rank test, two-sided, exactly as
//!   `scipy.stats.wilcoxon(x, y)` with its defaults (`zero_method="wilcox"`: zero differences
//!   are dropped; `correction=False`; `method="auto"`): with at most 50 pairs and neither ties
//!   nor zeros the exact null distribution; with ties or zeros and at most 13 pairs the exact
//!   sign-flip permutation distribution; otherwise the normal approximation with the tie
//!   correction.
//! * [`holm`] — Holm's step-down adjustment of a family of p-values.
//! * [`bootstrap_ci`] — a percentile bootstrap confidence interval of a mean, seeded.
//! * [`Summary`] — pandas' `mean`, `std` (n − 1) and `median` of a column, skipping NaN.

use crate::surface::percentile;
use crate::{Error, Result};
use rand::{RngExt, SeedableRng};

/// The two-sided p-value of the paired Wilcoxon signed-rank test of `x` against `y`, as
/// `scipy.stats.wilcoxon(x, y).pvalue` (see the module docs); NaN when every difference is 0.
///
/// # Errors
/// [`Error::InvalidArgument`] if the samples differ in length, are empty, or hold NaN.
pub fn wilcoxon(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() || x.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "wilcoxon needs two non-empty samples of equal length, got {} and {}",
            x.len(),
            y.len()
        )));
    }
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
    if d.iter().any(|v| v.is_nan()) {
        return Err(Error::InvalidArgument("wilcoxon: a difference is NaN".into()));
    }
    let n_total = d.len();
    let n_zero = d.iter().filter(|&&v| v == 0.0).count();
    let nz: Vec<f64> = d.iter().copied().filter(|&v| v != 0.0).collect();
    let n = nz.len();
    if n == 0 {
        return Ok(f64::NAN);
    }
    let (ranks, tie_sizes) = average_ranks(&nz.iter().map(|v| v.abs()).collect::<Vec<_>>());
    let r_plus: f64 = nz.iter().zip(&ranks).filter(|(v, _)| **v > 0.0).map(|(_, r)| r).sum();
    let has_ties = tie_sizes.iter().any(|&t| t > 1);
    if n_total <= 50 && !has_ties && n_zero == 0 {
        return Ok(exact_p(n, r_plus));
    }
    if n_total <= 13 {
        return Ok(permutation_p(&ranks, r_plus));
    }
    let nf = n as f64;
    let mn = nf * (nf + 1.0) * 0.25;
    let tie: f64 = tie_sizes.iter().map(|&t| (t as f64).powi(3) - t as f64).sum();
    let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie / 2.0) / 24.0).sqrt();
    let z = (r_plus - mn) / se;
    Ok((2.0 * normal_sf(z.abs())).min(1.0))
}

/// Average ranks (1-based) of `v` and the size of every tie group.
fn average_ranks(v: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && v[idx[j]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j + 1) as f64 / 2.0; // mean of ranks i+1 ..= j
        for &k in &idx[i..j] {
            ranks[k] = r;
        }
        ties.push(j - i);
        i = j;
    }
    (ranks, ties)
}

/// Two-sided exact p-value: `2 min(P(T ≥ ⌊r⌋), P(T ≤ ⌈r⌉))`, clipped to 1.
fn exact_p(n: usize, r_plus: f64) -> f64 {
    let max = n * (n + 1) / 2;
    // counts[k]: subsets of {1..n} summing to k.
    let mut counts = vec![0.0f64; max + 1];
    counts[0] = 1.0;
    for i in 1..=n {
        for k in (i..=max).rev() {
            counts[k] += counts[k - i];
        }
    }
    let total: f64 = counts.iter().sum();
    let lo = r_plus.floor().max(0.0) as usize;
    let hi = (r_plus.ceil() as usize).min(max);
    let sf: f64 = counts[lo.min(max + 1)..].iter().sum::<f64>() / total;
    let cdf: f64 = counts[..=hi].iter().sum::<f64>() / total;
    (2.0 * sf.min(cdf)).min(1.0)
}

/// Two-sided p-value of the exact sign-flip permutation test of the statistic `r_plus` (the
/// sum of the ranks of the positive differences), as scipy's `permutation_test`.
fn permutation_p(ranks: &[f64], r_plus: f64) -> f64 {
    let n = ranks.len();
    let gamma = (r_plus * f64::EPSILON * 100.0).abs();
    let (mut less, mut greater) = (0usize, 0usize);
    // Zero differences flip too in scipy, doubling every count: the ratio is unchanged.
    for signs in 0u32..(1u32 << n) {
        let s: f64 = (0..n).filter(|&i| signs >> i & 1 == 1).map(|i| ranks[i]).sum();
        less += (s <= r_plus + gamma) as usize;
        greater += (s >= r_plus - gamma) as usize;
    }
    let total = (1u64 << n) as f64;
    (2.0 * (less as f64 / total).min(greater as f64 / total)).min(1.0)
}

/// `P(Z > z)` for a standard normal `Z`, to about 1e-15 relative accuracy.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function: the Maclaurin series of erf below 2.5 (cancellation loses
/// under 1e-13), Lentz's continued fraction above.
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        let (mut term, mut sum, x2) = (x, x, x * x);
        for k in 1..200 {
            term *= -x2 / k as f64;
            let t = term / (2 * k + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        return 1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    // erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …))))).
    let tiny = 1e-300;
    let mut f = x;
    let (mut c, mut d) = (x, 0.0);
    for k in 1..500 {
        let a = k as f64 / 2.0;
        d = x + a * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = x + a / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// Holm's step-down adjusted p-values, in the order given; NaN entries stay NaN and do not
/// count in the family.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = idx.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running = 0.0f64;
    for (rank, &i) in idx.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Percentile bootstrap `level` confidence interval (e.g. 0.95) of the mean of `x`:
/// `resamples` resamples with replacement drawn from a ChaCha8 generator seeded with `seed`;
/// the bounds are numpy-style percentiles of the resampled means.
///
/// # Errors
/// [`Error::InvalidArgument`] if `x` or `resamples` is empty or `level` is not in (0, 1).
pub fn bootstrap_ci(x: &[f64], resamples: usize, level: f64, seed: u64) -> Result<(f64, f64)> {
    if x.is_empty() || resamples == 0 || !(level > 0.0 && level < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "bootstrap_ci: {} values, {resamples} resamples, level {level}",
            x.len()
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = x.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| x[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    let alpha = (1.0 - level) / 2.0;
    let lo = percentile(&mut means, 100.0 * alpha);
    let hi = percentile(&mut means, 100.0 * (1.0 - alpha));
    Ok((lo, hi))
}

/// pandas' summary of a column (`df.mean()`, `df.std()`, `df.median()`): NaN values are
/// skipped; an infinite value makes the mean infinite and the standard deviation NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Mean of the non-NaN values (NaN if none).
    pub mean: f64,
    /// Sample standard deviation (n − 1) of the non-NaN values (NaN with fewer than 2).
    pub std: f64,
    /// Median of the non-NaN values (NaN if none).
    pub median: f64,
}

impl Summary {
    /// Summarises `values`.
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        let n = v.len();
        if n == 0 {
            return Summary { mean: f64::NAN, std: f64::NAN, median: f64::NAN };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n < 2 || !mean.is_finite() {
            f64::NAN
        } else {
            (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        // numpy's median: the mean of the middle values (so [1, inf] gives inf, not NaN).
        v.sort_unstable_by(f64::total_cmp);
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Summary { mean, std, median }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail() {
        // scipy.stats.norm.sf
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.15865525393145707),
            (1.96, 0.024997895148220435),
            (3.0, 0.0013498980316301035),
            (6.0, 9.865876450376946e-10),
            (-1.0, 0.8413447460685429),
        ] {
            let got = normal_sf(z);
            assert!((got - want).abs() <= 1e-13 * want.max(1e-300) + 1e-16, "{z}: {got} vs {want}");
        }
    }

    #[test]
    fn holm_steps_down() {
        let adj = holm(&[0.01, 0.04, 0.03, f64::NAN]);
        assert!((adj[0] - 0.03).abs() < 1e-15);
        assert!((adj[2] - 0.06).abs() < 1e-15);
        assert!((adj[1] - 0.06).abs() < 1e-15);
        assert!(adj[3].is_nan());
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let x: Vec<f64> = (0..30).map(|i| (i as f64 * 0.37).sin()).collect();
        let a = bootstrap_ci(&x, 2000, 0.95, 1).unwrap();
        assert_eq!(a, bootstrap_ci(&x, 2000, 0.95, 1).unwrap());
        let mean = x.iter().sum::<f64>() / 30.0;
        assert!(a.0 < mean && mean < a.1);
        assert!(bootstrap_ci(&[], 10, 0.95, 1).is_err());
    }

    #[test]
    fn summary_like_pandas() {
        let s = Summary::of(&[1.0, f64::NAN, 3.0, 2.0]);
        assert_eq!((s.mean, s.std, s.median), (2.0, 1.0, 2.0));
        let s = Summary::of(&[1.0, f64::INFINITY]);
        assert!(s.mean.is_infinite() && s.std.is_nan() && s.median.is_infinite());
    }
}
