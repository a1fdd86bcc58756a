//! Fused softmax attention for "many queries, few keys" on the CPU: the CPU path of
//! [`crate::cross_attention`] with [`crate::AttentionVariant::Softmax`].
//!
//! Flash-attention style: per `(batch, head)` and block of queries, the scores block
//! `scale·Q_b Kᵀ` lives in a cache-sized buffer, is softmaxed in place and multiplied by `V`;
//! only the per-query log-sum-exp is kept for the backward, which recomputes the
//! probabilities block by block (`dS = P∘(dP − rowsum(dO∘O))`). The `Nq × Nk` matrix is
//! never stored, and the composition of candle ops it replaces (matmul, max, exp, sum, div and
//! their backward passes) was ~4× slower than PyTorch's einsum version forward + backward.
//! Blocks are multiplied with the `gemm` crate; work is parallel over `(batch, head)`.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_f32;

/// Queries per block: the scores block is `BLOCK × Nk` floats.
const BLOCK: usize = 128;

/// `softmax(scale·q kᵀ) v` for contiguous f32 `q` `(B, h, Nq, dh)`, `k`, `v` `(B, h, Nk, dh)`,
/// shapes already checked by the caller.
pub(crate) fn softmax_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.apply_op3(k, v, SoftmaxAttention { scale: scale as f32, lse: OnceLock::new() })
}

/// The custom op; keeps the forward's per-query log-sum-exp for the backward.
struct SoftmaxAttention {
    scale: f32,
    lse: OnceLock<Vec<f32>>,
}

/// A strided read-only matrix view: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    fn t(self) -> Self {
        Self { data: self.data, rs: self.cs, cs: self.rs }
    }

    /// Panics (a bug, not bad input) if an `r × c` view would read past the slice.
    fn check(&self, r: usize, c: usize) {
        if r > 0 && c > 0 {
            assert!(
                (r - 1) * self.rs + (c - 1) * self.cs < self.data.len(),
                "matrix view out of bounds"
            );
        }
    }
}

/// `dst (m × n, row-major) = beta·a·b`, plus the old `dst` when `accumulate`.
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n, "matmul destination too small");
    a.check(m, k);
    b.check(k, n);
    // SAFETY: the three views were bounds-checked above for the sizes passed to gemm; `dst`
    // is exclusively borrowed and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Sizes `(B·h, Nq, Nk, dh)`.
fn sizes(q: &Shape, k: &Shape) -> (usize, usize, usize, usize) {
    let (qd, kd) = (q.dims(), k.dims());
    (qd[0] * qd[1], qd[2], kd[2], qd[3])
}

/// Forward of one `(batch, head)`: writes `out` (`Nq × dh`) and `lse` (`Nq`).
fn forward_head(
    (q, k, v): (&[f32], &[f32], &[f32]),
    dh: usize,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (nq, nk) = (lse.len(), k.len() / dh);
    let mut s = vec![0f32; BLOCK * nk];
    for i0 in (0..nq).step_by(BLOCK) {
        let m = BLOCK.min(nq - i0);
        let sb = &mut s[..m * nk];
        matmul(sb, (m, nk, dh), Mat::rows(&q[i0 * dh..], dh), Mat::rows(k, dh).t(), scale, false);
        for (row, l) in sb.chunks_exact_mut(nk).zip(&mut lse[i0..i0 + m]) {
            let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for p in row.iter_mut() {
                *p = (*p - mx).exp();
                sum += *p;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|p| *p *= inv);
            *l = mx + sum.ln();
        }
        matmul(
            &mut out[i0 * dh..(i0 + m) * dh],
            (m, dh, nk),
            Mat::rows(sb, nk),
            Mat::rows(v, dh),
            1.0,
            false,
        );
    }
}

/// Backward of one `(batch, head)`: writes `dq`, `dk`, `dv`.
fn backward_head(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (o, dout, lse): (&[f32], &[f32], &[f32]),
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let nq = lse.len();
    let dh = q.len() / nq;
    let nk = k.len() / dh;
    let mut p = vec![0f32; BLOCK * nk];
    let mut dp = vec![0f32; BLOCK * nk];
    for i0 in (0..nq).step_by(BLOCK) {
        let m = BLOCK.min(nq - i0);
        let (pb, dpb) = (&mut p[..m * nk], &mut dp[..m * nk]);
        let (qb, dob) = (&q[i0 * dh..(i0 + m) * dh], &dout[i0 * dh..(i0 + m) * dh]);
        // P = exp(scale·Q_b Kᵀ − lse), dP = dO_b Vᵀ.
        matmul(pb, (m, nk, dh), Mat::rows(qb, dh), Mat::rows(k, dh).t(), scale, false);
        for (row, &l) in pb.chunks_exact_mut(nk).zip(&lse[i0..i0 + m]) {
            row.iter_mut().for_each(|s| *s = (*s - l).exp());
        }
        matmul(dpb, (m, nk, dh), Mat::rows(dob, dh), Mat::rows(v, dh).t(), 1.0, false);
        // dS = P ∘ (dP − rowsum(dO ∘ O)), in place of dP.
        let ob = &o[i0 * dh..(i0 + m) * dh];
        for (i, (dr, pr)) in dpb.chunks_exact_mut(nk).zip(pb.chunks_exact(nk)).enumerate() {
            let di: f32 = dob[i * dh..(i + 1) * dh]
                .iter()
                .zip(&ob[i * dh..(i + 1) * dh])
                .map(|(a, b)| a * b)
                .sum();
            for (d, &pv) in dr.iter_mut().zip(pr) {
                *d = pv * (*d - di);
            }
        }
        // dQ_b = scale·dS K;  dK += scale·dSᵀ Q_b;  dV += Pᵀ dO_b.
        matmul(
            &mut dq[i0 * dh..(i0 + m) * dh],
            (m, dh, nk),
            Mat::rows(dpb, nk),
            Mat::rows(k, dh),
            scale,
            false,
        );
        matmul(dk, (nk, dh, m), Mat::rows(dpb, nk).t(), Mat::rows(qb, dh), scale, true);
        matmul(dv, (nk, dh, m), Mat::rows(pb, nk).t(), Mat::rows(dob, dh), 1.0, true);
    }
}

impl SoftmaxAttention {
    /// Output and log-sum-exp of contiguous inputs.
    fn forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (bh, nq, nk, dh): (usize, usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0f32; bh * nq * dh];
        let mut lse = vec![0f32; bh * nq];
        if nq > 0 && dh > 0 {
            out.par_chunks_mut(nq * dh).zip(lse.par_chunks_mut(nq)).enumerate().for_each(
                |(i, (o, l))| {
                    let (qs, ks) = (nq * dh, nk * dh);
                    let kr = i * ks..(i + 1) * ks;
                    forward_head(
                        (&q[i * qs..(i + 1) * qs], &k[kr.clone()], &v[kr]),
                        dh,
                        self.scale,
                        o,
                        l,
                    )
                },
            );
        }
        (out, lse)
    }
}

impl CustomOp3 for SoftmaxAttention {
    fn name(&self) -> &'static str {
        "softmax-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = cpu_f32::slice(s1, l1, self.name())?;
        let k = cpu_f32::slice(s2, l2, self.name())?;
        let v = cpu_f32::slice(s3, l3, self.name())?;
        let (out, lse) = self.forward(q, k, v, sizes(l1.shape(), l2.shape()));
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let dims @ (bh, nq, nk, dh) = sizes(q.shape(), k.shape());
        let (dq, dk, dv) = cpu_f32::with_tensor(q, name, |qs| {
            cpu_f32::with_tensor(k, name, |ks| {
                cpu_f32::with_tensor(v, name, |vs| {
                    cpu_f32::with_tensor(res, name, |os| {
                        cpu_f32::with_tensor(grad, name, |dos| {
                            let lse = self.lse.get_or_init(|| self.forward(qs, ks, vs, dims).1);
                            let mut dq = vec![0f32; bh * nq * dh];
                            let mut dk = vec![0f32; bh * nk * dh];
                            let mut dv = vec![0f32; bh * nk * dh];
                            if nq > 0 && dh > 0 {
                                let (qn, kn) = (nq * dh, nk * dh);
                                dq.par_chunks_mut(qn)
                                    .zip(dk.par_chunks_mut(kn).zip(dv.par_chunks_mut(kn)))
                                    .enumerate()
                                    .for_each(|(i, (dqh, (dkh, dvh)))| {
                                        let qr = i * qn..(i + 1) * qn;
                                        let kr = i * kn..(i + 1) * kn;
                                        backward_head(
                                            (&qs[qr.clone()], &ks[kr.clone()], &vs[kr]),
                                            (&os[qr.clone()], &dos[qr], &lse[i * nq..(i + 1) * nq]),
                                            self.scale,
                                            dqh,
                                            dkh,
                                            dvh,
                                        )
                                    });
                            }
                            Ok((dq, dk, dv))
                        })
                    })
                })
            })
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}
