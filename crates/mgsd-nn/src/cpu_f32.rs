//! Crate-private helpers for the CPU paths of the custom ops: borrowing the contiguous `f32`
//! data of a storage or a tensor, and a chunked reduction that keeps `f32` speed with `f64`
//! accuracy.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// The contiguous `f32` slice that `layout` addresses in `storage`.
pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{op}: expected f32, got {:?}", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{op}: input of shape {:?} must be contiguous (stride {:?})",
            layout.shape(),
            layout.stride()
        ),
    }
}

/// A new vector of `len` values, written in parallel chunks of `chunk`: `init(i, dst)` must
/// write every element of chunk `i`.
///
/// Use this instead of `vec![0.0; len]` when the values would then be updated in place: a
/// fresh `calloc`ed page that is read before it is written maps the shared zero page first, and
/// the write that follows costs a second fault plus a TLB shoot-down on every other core. On
/// the 2-vCPU VM that pattern took a quarter of a BraTS-size forward pass.
pub(crate) fn par_init(
    len: usize,
    chunk: usize,
    init: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, dst)| init(i, dst));
    // SAFETY: every chunk of the first `len` elements was written by `init`.
    unsafe { v.set_len(len) };
    v
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor (copied to contiguous if needed).
pub(crate) fn with_tensor<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = if t.is_contiguous() { t.clone() } else { t.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout, op)?),
        _ => bail!("{op}: backward is implemented on the CPU only (tensor on {:?})", t.device()),
    }
}

/// Checks that a public entry point got an `f32` tensor of rank 5 and returns its dims.
pub(crate) fn dims5(t: &Tensor, op: &str) -> Result<[usize; 5]> {
    if t.dtype() != candle_core::DType::F32 {
        bail!("{op}: expected an f32 tensor, got {:?}", t.dtype());
    }
    match *t.dims() {
        [n, c, d, h, w] => Ok([n, c, d, h, w]),
        _ => bail!("{op}: expected a (N, C, D, H, W) tensor, got shape {:?}", t.shape()),
    }
}

/// Chunk length of the reductions: short enough that `f32` partial sums stay accurate,
/// long enough that the `f64` bookkeeping costs nothing.
const CHUNK: usize = 1024;

/// `(Σ (x - shift), Σ (x - shift)²)` with 8-lane `f32` partials per chunk, `f64` across chunks.
pub(crate) fn sum_sq_shifted(x: &[f32], shift: f32) -> (f64, f64) {
    let (mut s, mut q) = (0f64, 0f64);
    for chunk in x.chunks(CHUNK) {
        let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
        let mut it = chunk.chunks_exact(8);
        for c in &mut it {
            for i in 0..8 {
                let d = c[i] - shift;
                a[i] += d;
                b[i] += d * d;
            }
        }
        for (i, &v) in it.remainder().iter().enumerate() {
            let d = v - shift;
            a[i] += d;
            b[i] += d * d;
        }
        s += a.iter().map(|&v| v as f64).sum::<f64>();
        q += b.iter().map(|&v| v as f64).sum::<f64>();
    }
    (s, q)
}

/// `(Σ g, Σ g·x)` where `g = dy` masked by `mask(x)`, same accumulation scheme as
/// [`sum_sq_shifted`]. `mask` is `None` for no masking.
pub(crate) fn sum_grad_dot(dy: &[f32], x: &[f32], relu: Option<(f32, f32)>) -> (f64, f64) {
    let (mut s, mut q) = (0f64, 0f64);
    for (dc, xc) in dy.chunks(CHUNK).zip(x.chunks(CHUNK)) {
        let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
        let mut di = dc.chunks_exact(8);
        let mut xi = xc.chunks_exact(8);
        match relu {
            None => {
                for (d8, x8) in (&mut di).zip(&mut xi) {
                    for i in 0..8 {
                        a[i] += d8[i];
                        b[i] += d8[i] * x8[i];
                    }
                }
            }
            Some((sc, sh)) => {
                for (d8, x8) in (&mut di).zip(&mut xi) {
                    for i in 0..8 {
                        let g = if x8[i] * sc + sh > 0.0 { d8[i] } else { 0.0 };
                        a[i] += g;
                        b[i] += g * x8[i];
                    }
                }
            }
        }
        for (i, (&d, &xv)) in di.remainder().iter().zip(xi.remainder()).enumerate() {
            let g = match relu {
                Some((sc, sh)) if xv * sc + sh <= 0.0 => 0.0,
                _ => d,
            };
            a[i] += g;
            b[i] += g * xv;
        }
        s += a.iter().map(|&v| v as f64).sum::<f64>();
        q += b.iter().map(|&v| v as f64).sum::<f64>();
    }
    (s, q)
}

/// Helpers for the unit tests: deterministic data and finite-difference gradients of the
/// slow `f64` reference implementations.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};

    /// Deterministic pseudo-random values in `[-1, 1)`.
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `∂/∂xᵢ Σ f(x)·r` by central differences of an `f64` reference `f`.
    pub(crate) fn numeric_grad(f: &dyn Fn(&[f64]) -> Vec<f64>, x: &[f64], r: &[f64]) -> Vec<f64> {
        let loss = |x: &[f64]| f(x).iter().zip(r).map(|(a, b)| a * b).sum::<f64>();
        let eps = 1e-6;
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                xp[i] = x[i] + eps;
                let lp = loss(&xp);
                xp[i] = x[i] - eps;
                let lm = loss(&xp);
                xp[i] = x[i];
                (lp - lm) / (2.0 * eps)
            })
            .collect()
    }

    /// Largest `|a − b| / (1 + |b|)`.
    pub(crate) fn max_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len(), "length");
        a.iter().zip(b).map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max)
    }

    /// Variables holding `data` with the given shapes.
    pub(crate) fn vars(inputs: &[(&[f32], &[usize])]) -> Vec<Var> {
        inputs
            .iter()
            .map(|(d, s)| {
                Var::from_tensor(&Tensor::from_slice(d, *s, &Device::Cpu).unwrap()).unwrap()
            })
            .collect()
    }

    /// Checks the op's output and the gradients of `Σ y·r` with respect to every input against
    /// the `f64` reference `f` of all inputs concatenated.
    pub(crate) fn check_op(
        inputs: &[(&[f32], &[usize])],
        op: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
        reference: &dyn Fn(&[f64]) -> Vec<f64>,
        tol: f64,
    ) {
        let vs = vars(inputs);
        let ts: Vec<Tensor> = vs.iter().map(|v| v.as_tensor().clone()).collect();
        let y = op(&ts).unwrap();
        let flat: Vec<f64> = inputs.iter().flat_map(|(d, _)| d.iter().map(|&v| v as f64)).collect();
        let yref = reference(&flat);
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_err(&yv, &yref) < tol, "forward error {}", max_err(&yv, &yref));
        let r = values(yv.len(), 99);
        let rt = Tensor::from_slice(&r, y.shape(), &Device::Cpu).unwrap();
        let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
        let r64: Vec<f64> = r.iter().map(|&v| v as f64).collect();
        let num = numeric_grad(reference, &flat, &r64);
        let mut off = 0;
        for (i, v) in vs.iter().enumerate() {
            let g = grads.get(v).expect("gradient reaches every input");
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let e = max_err(&g, &num[off..off + g.len()]);
            assert!(e < tol, "gradient of input {i}: error {e}");
            off += g.len();
        }
    }
}
