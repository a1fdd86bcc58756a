//! Entry points of `src/kernels/attention.cu`: their names, argument lists and launch geometry.
//!
//! This is the contract a host-side caller (the future candle custom ops, and today
//! `gpu/check_attention.py`, which mirrors these functions) must follow. Every kernel uses
//! static shared memory only (at most 34 KiB, under the 48 KiB default), so no launch needs a
//! dynamic shared-memory size or a raised limit.
//!
//! Tensors are `(B, H, N, dh)` contiguous, addressed as `B·H` heads of `N` rows; `bh` below is
//! `B·H`. All workspaces are f32 and those marked "zeroed" must be zero before the launch
//! (the kernels accumulate into them with `atomicAdd`).
//!
//! | op | arguments | computes |
//! |---|---|---|
//! | [`Op::Outer`] | `a, b, out, n, rows_per_block, alpha` | `out[bh] += alpha·aᵀb` (out zeroed f32 `(bh, dh, dh)`) |
//! | [`Op::Apply`] | `x, m, out, n, alpha, transpose` | `out = alpha·x·M` or `alpha·x·Mᵀ` (`m` f32 `(bh, dh, dh)`) |
//! | [`Op::SoftmaxForward`] | `q, k, v, out, lse, nq, nk, scale` | `out`, and `lse` f32 `(bh, nq)` natural log |
//! | [`Op::SoftmaxBackwardPre`] | `out, dout, dsum, rows` | `dsum[r] = Σ dout∘out` f32 `(bh·nq)` |
//! | [`Op::SoftmaxBackwardDq`] | `q, k, v, dout, lse, dsum, dq, nq, nk, scale` | `dq` |
//! | [`Op::SoftmaxBackwardDkDv`] | `q, k, v, dout, lse, dsum, dk, dv, nq, nk, scale, q_per_block` | `dk`, `dv` zeroed f32 `(bh, nk, dh)` |
//! | [`CAST_F32_BF16`] | `in, out, n` | f32 → bf16 (the softmax `dk`, `dv` in bf16) |
//!
//! No softmax, forward: `M = 0; Outer(k, v, M, nk, ·, 1); Apply(q, M, out, nq, scale, 0)`.
//! Backward: `dM = 0; Outer(q, dout, dM, nq, ·, scale); Apply(dout, M, dq, nq, scale, 1);
//! Apply(v, dM, dk, nk, 1, 1); Apply(k, dM, dv, nk, 1, 0)`.
//! Softmax backward: `Pre`, then `Dq` and `DkDv` (independent), then the casts for bf16.

use thiserror::Error;

/// Head dims the kernels are instantiated for.
pub const HEAD_DIMS: [usize; 2] = [32, 64];

/// The f32 → bf16 conversion kernel (one for every head dim).
pub const CAST_F32_BF16: &str = "mgsd_attn_cast_f32_bf16";

/// Argument kinds of [`CAST_F32_BF16`], as [`Op::signature`].
pub const CAST_SIGNATURE: &str = "ppi";

/// Rows of `a`/`b` staged per shared-memory tile by [`Op::Outer`].
const OUTER_ROWS_TILE: usize = 32;
/// Threads per block of the query- and key-parallel softmax kernels.
const SOFTMAX_THREADS: usize = 128;
/// Threads per block of [`Op::Apply`], [`Op::SoftmaxBackwardPre`] and the cast.
const WIDE_THREADS: usize = 256;
/// Most row tiles one block of the bf16 (tensor-core) [`Op::Apply`] takes: it rounds M into
/// two bf16 matrices once per block, which several tiles share when there are rows enough.
const APPLY_BF16_MAX_TILES: usize = 8;

/// Errors of the launch-geometry functions.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// The kernels exist for head dims 32 and 64 only.
    #[error("mgsd-kernels: head dim {0} is not supported (32 or 64)")]
    UnsupportedHeadDim(usize),
    /// A size that must be positive is zero.
    #[error("mgsd-kernels: {0} must be positive")]
    Empty(&'static str),
    /// A size does not fit the kernels' 32-bit arguments or the grid limits.
    #[error("mgsd-kernels: {what} = {value} is too large for one launch")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: usize,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, LaunchError>;

/// Storage type of `q`, `k`, `v` and their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// f32.
    F32,
    /// bf16 (f32 accumulation).
    Bf16,
}

impl Dtype {
    /// Both dtypes.
    pub const ALL: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];

    /// Suffix in the kernel names.
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// The kernels instantiated per dtype and head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `out[bh] += alpha·aᵀb` over a chunk of rows (no softmax: `M = kᵀv`, `dM = scale·qᵀdout`).
    Outer,
    /// `out = alpha·x·M` or `alpha·x·Mᵀ` (no softmax: `out`, `dq`, `dk`, `dv`).
    Apply,
    /// Softmax forward with the logsumexp.
    SoftmaxForward,
    /// `dsum = rowsum(dout ∘ out)` for the softmax backward.
    SoftmaxBackwardPre,
    /// Softmax backward, `dq` (query-parallel).
    SoftmaxBackwardDq,
    /// Softmax backward, `dk` and `dv` (key-parallel over a slice of the queries).
    SoftmaxBackwardDkDv,
}

impl Op {
    /// Every op.
    pub const ALL: [Op; 6] = [
        Op::Outer,
        Op::Apply,
        Op::SoftmaxForward,
        Op::SoftmaxBackwardPre,
        Op::SoftmaxBackwardDq,
        Op::SoftmaxBackwardDkDv,
    ];

    /// Middle part of the kernel name, `mgsd_attn_<stem>_<dtype>_d<dh>`.
    pub fn stem(self) -> &'static str {
        match self {
            Op::Outer => "outer",
            Op::Apply => "apply",
            Op::SoftmaxForward => "sm_fwd",
            Op::SoftmaxBackwardPre => "sm_bwd_pre",
            Op::SoftmaxBackwardDq => "sm_bwd_dq",
            Op::SoftmaxBackwardDkDv => "sm_bwd_dkdv",
        }
    }

    /// Argument kinds in order: `p` a device pointer, `i` an `int` (i32), `f` a `float`.
    pub fn signature(self) -> &'static str {
        match self {
            Op::Outer => "pppiif",
            Op::Apply => "pppifi",
            Op::SoftmaxForward => "pppppiif",
            Op::SoftmaxBackwardPre => "pppi",
            Op::SoftmaxBackwardDq => "pppppppiif",
            Op::SoftmaxBackwardDkDv => "ppppppppiifi",
        }
    }
}

/// Name of the entry point of `op` for `dtype` and `head_dim`.
pub fn kernel_name(op: Op, dtype: Dtype, head_dim: usize) -> Result<String> {
    check_head_dim(head_dim)?;
    Ok(format!("mgsd_attn_{}_{}_d{head_dim}", op.stem(), dtype.suffix()))
}

/// Grid and block of one launch (`shared_mem_bytes` is always 0: static shared memory only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks along x, y, z.
    pub grid: [u32; 3],
    /// Threads along x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_mem_bytes: u32,
}

impl Launch {
    fn new(grid: [usize; 3], block: usize) -> Result<Self> {
        let lim = [(i32::MAX as usize, "grid.x"), (65_535, "grid.y (B·H)"), (65_535, "grid.z")];
        let mut g = [0u32; 3];
        for (d, (&v, (max, what))) in grid.iter().zip(lim).enumerate() {
            if v == 0 {
                return Err(LaunchError::Empty(what));
            }
            if v > max {
                return Err(LaunchError::TooLarge { what, value: v });
            }
            g[d] = v as u32;
        }
        Ok(Self { grid: g, block: [block as u32, 1, 1], shared_mem_bytes: 0 })
    }
}

/// [`Op::Outer`] over `n` rows per head: the launch and its `rows_per_block` argument.
/// The rows are split over enough blocks for about 1024 threads per multiprocessor, with at
/// least 128 rows per block (each block adds its `dh²` partial sums with atomics).
pub fn outer(bh: usize, n: usize, head_dim: usize, num_sms: usize) -> Result<(Launch, u32)> {
    check_sizes(bh, n, head_dim)?;
    let threads = (head_dim / 4) * (head_dim / 4);
    let target = num_sms.max(1) * (1024 / threads);
    let per_head = target.div_ceil(bh).min(n.div_ceil(128)).max(1);
    let rows = n.div_ceil(per_head).div_ceil(OUTER_ROWS_TILE) * OUTER_ROWS_TILE;
    Ok((Launch::new([n.div_ceil(rows), bh, 1], threads)?, rows as u32))
}

/// [`Op::Apply`] over `n` rows per head, in tiles of `2·256/(dh/8)` rows (128 or 64). In f32 a
/// block takes one tile. In bf16 a block takes `ceil(tiles / grid.x)` tiles (the kernel derives
/// it from its grid): one while that leaves fewer than 8 blocks per multiprocessor, up to
/// [`APPLY_BF16_MAX_TILES`] beyond.
pub fn apply(bh: usize, n: usize, head_dim: usize, dtype: Dtype, num_sms: usize) -> Result<Launch> {
    check_sizes(bh, n, head_dim)?;
    let tiles = n.div_ceil(apply_tile_rows(head_dim));
    let per_block = match dtype {
        Dtype::F32 => 1,
        Dtype::Bf16 => {
            let blocks_per_head = (num_sms.max(1) * 8).div_ceil(bh);
            tiles.div_ceil(blocks_per_head).clamp(1, APPLY_BF16_MAX_TILES)
        }
    };
    Launch::new([tiles.div_ceil(per_block), bh, 1], WIDE_THREADS)
}

/// Rows of one [`Op::Apply`] tile: 128 for head dim 32, 64 for 64.
pub fn apply_tile_rows(head_dim: usize) -> usize {
    (WIDE_THREADS / (head_dim / 8)) * 2
}

/// [`Op::SoftmaxForward`] and [`Op::SoftmaxBackwardDq`]: `128 / (dh/32)` queries per block.
pub fn query_parallel(bh: usize, nq: usize, head_dim: usize) -> Result<Launch> {
    check_sizes(bh, nq, head_dim)?;
    let per_block = SOFTMAX_THREADS / (head_dim / 32);
    Launch::new([nq.div_ceil(per_block), bh, 1], SOFTMAX_THREADS)
}

/// [`Op::SoftmaxBackwardPre`] over all `rows = B·H·Nq` rows.
pub fn softmax_backward_pre(rows: usize, head_dim: usize) -> Result<Launch> {
    check_sizes(1, rows, head_dim)?;
    Launch::new([rows.div_ceil(WIDE_THREADS / (head_dim / 4)), 1, 1], WIDE_THREADS)
}

/// [`Op::SoftmaxBackwardDkDv`]: the launch and its `q_per_block` argument. Keys over grid x,
/// heads over y, slices of the queries over z, about two blocks per multiprocessor.
pub fn softmax_backward_dkdv(
    bh: usize,
    nq: usize,
    nk: usize,
    head_dim: usize,
    num_sms: usize,
) -> Result<(Launch, u32)> {
    check_sizes(bh, nq, head_dim)?;
    check_sizes(bh, nk, head_dim)?;
    let keys_per_block = SOFTMAX_THREADS / (head_dim / 32);
    let tile = query_tile(head_dim);
    let kblocks = nk.div_ceil(keys_per_block);
    let split = (2 * num_sms.max(1)).div_ceil(kblocks * bh).min(nq.div_ceil(tile)).max(1);
    let per_block = nq.div_ceil(split).div_ceil(tile) * tile;
    Ok((Launch::new([kblocks, bh, nq.div_ceil(per_block)], SOFTMAX_THREADS)?, per_block as u32))
}

/// [`CAST_F32_BF16`] over `n` elements (grid-stride loop).
pub fn cast(n: usize) -> Result<Launch> {
    if n == 0 {
        return Err(LaunchError::Empty("elements"));
    }
    if n > i32::MAX as usize {
        return Err(LaunchError::TooLarge { what: "elements", value: n });
    }
    Launch::new([n.div_ceil(WIDE_THREADS).min(1 << 16), 1, 1], WIDE_THREADS)
}

/// Keys (forward, dq) or queries (dk/dv) per shared-memory tile: 32 KiB of f32 pairs.
fn query_tile(head_dim: usize) -> usize {
    if head_dim == 32 {
        128
    } else {
        64
    }
}

fn check_head_dim(head_dim: usize) -> Result<()> {
    if HEAD_DIMS.contains(&head_dim) {
        Ok(())
    } else {
        Err(LaunchError::UnsupportedHeadDim(head_dim))
    }
}

fn check_sizes(bh: usize, n: usize, head_dim: usize) -> Result<()> {
    check_head_dim(head_dim)?;
    if bh == 0 {
        return Err(LaunchError::Empty("B·H"));
    }
    if n == 0 {
        return Err(LaunchError::Empty("rows"));
    }
    // The kernels take row counts as i32 and index in 64 bits; keep `bh·n` in i32 too
    // (the softmax backward's `rows` argument).
    let total = bh.checked_mul(n).filter(|&t| t <= i32::MAX as usize);
    if total.is_none() {
        return Err(LaunchError::TooLarge { what: "B·H·rows", value: bh.saturating_mul(n) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUM_SMS: usize = 132;

    #[test]
    fn names_follow_the_source_macros() {
        let cu = crate::ATTENTION_CU;
        for op in Op::ALL {
            assert!(cu.contains(&format!("mgsd_attn_{}_##TN##_d##DH(", op.stem())), "{op:?}");
        }
        for (ty, dt) in [("float", Dtype::F32), ("bf16", Dtype::Bf16)] {
            for dh in HEAD_DIMS {
                assert!(cu.contains(&format!("MGSD_ATTN_ENTRIES({ty}, {}, {dh})", dt.suffix())));
            }
        }
        assert!(cu.contains(&format!("{CAST_F32_BF16}(")));
        assert_eq!(
            kernel_name(Op::SoftmaxBackwardDkDv, Dtype::Bf16, 64).unwrap(),
            "mgsd_attn_sm_bwd_dkdv_bf16_d64"
        );
        assert_eq!(
            kernel_name(Op::Apply, Dtype::F32, 48),
            Err(LaunchError::UnsupportedHeadDim(48))
        );
    }

    #[test]
    fn check_script_uses_the_same_signatures() {
        let py = include_str!("../gpu/check_attention.py");
        for op in Op::ALL {
            let line = format!("\"{}\": \"{}\",", op.stem(), op.signature());
            assert!(py.contains(&line), "check_attention.py lacks {line}");
        }
    }

    /// The numbers `check_attention.py --dry-run` prints for the same shapes.
    #[test]
    fn geometry_matches_the_check_script() {
        // MGSD: B·H = 16, Nq = 7680, Nk = 120, dh = 32.
        let (l, rows) = outer(16, 7680, 32, NUM_SMS).unwrap();
        assert_eq!((l.grid, l.block[0], rows), ([60, 16, 1], 64, 128));
        let (l, rows) = outer(16, 120, 32, NUM_SMS).unwrap();
        assert_eq!((l.grid, rows), ([1, 16, 1], 128));
        assert_eq!(apply(16, 7680, 32, Dtype::F32, NUM_SMS).unwrap().grid, [60, 16, 1]);
        assert_eq!(apply(16, 7680, 32, Dtype::Bf16, NUM_SMS).unwrap().grid, [60, 16, 1]);
        assert_eq!(query_parallel(16, 7680, 32).unwrap().grid, [60, 16, 1]);
        let (l, qpb) = softmax_backward_dkdv(16, 7680, 120, 32, NUM_SMS).unwrap();
        assert_eq!((l.grid, qpb), ([1, 16, 15], 512));
        // Big: B·H = 16, Nq = 100 000, Nk = 1024, dh = 64.
        let (l, rows) = outer(16, 100_000, 64, NUM_SMS).unwrap();
        assert_eq!((l.grid, l.block[0], rows), ([33, 16, 1], 256, 3040));
        let (l, rows) = outer(16, 1024, 64, NUM_SMS).unwrap();
        assert_eq!((l.grid, rows), ([8, 16, 1], 128));
        assert_eq!(apply(16, 100_000, 64, Dtype::F32, NUM_SMS).unwrap().grid, [1563, 16, 1]);
        assert_eq!(apply(16, 100_000, 64, Dtype::Bf16, NUM_SMS).unwrap().grid, [196, 16, 1]);
        assert_eq!(apply(16, 1024, 64, Dtype::Bf16, NUM_SMS).unwrap().grid, [16, 16, 1]);
        assert_eq!(query_parallel(16, 100_000, 64).unwrap().grid, [1563, 16, 1]);
        let (l, qpb) = softmax_backward_dkdv(16, 100_000, 1024, 64, NUM_SMS).unwrap();
        assert_eq!((l.grid, qpb), ([16, 16, 2], 50_048));
        // Odd sizes: B·H = 6, Nq = 1000, Nk = 77.
        let (l, qpb) = softmax_backward_dkdv(6, 1000, 77, 64, NUM_SMS).unwrap();
        assert_eq!((l.grid, qpb), ([2, 6, 16], 64));
    }

    #[test]
    fn grids_cover_every_row() {
        for dh in HEAD_DIMS {
            for n in [1, 31, 32, 33, 255, 257, 7680, 100_001] {
                for bh in [1, 3, 16, 64] {
                    let (l, rows) = outer(bh, n, dh, NUM_SMS).unwrap();
                    let covered = l.grid[0] as usize * rows as usize;
                    assert!(covered >= n && covered - (rows as usize) < n, "outer {bh} {n} {dh}");
                    let (l, qpb) = softmax_backward_dkdv(bh, n, 77, dh, NUM_SMS).unwrap();
                    let covered = l.grid[2] as usize * qpb as usize;
                    assert!(covered >= n && covered - (qpb as usize) < n, "dkdv {bh} {n} {dh}");
                    assert!(l.grid[0] as usize * (128 / (dh / 32)) >= 77);
                    for dt in [Dtype::F32, Dtype::Bf16] {
                        // The kernel's split: ceil(tiles / grid.x) tiles per block.
                        let tiles = n.div_ceil(apply_tile_rows(dh));
                        let blocks = apply(bh, n, dh, dt, NUM_SMS).unwrap().grid[0] as usize;
                        let per_block = tiles.div_ceil(blocks);
                        assert!(per_block <= APPLY_BF16_MAX_TILES, "apply {n} {dh}");
                        assert!((blocks - 1) * per_block < tiles, "apply {n} {dh}: idle block");
                    }
                    let pre = softmax_backward_pre(bh * n, dh).unwrap();
                    assert!(pre.grid[0] as usize * (256 / (dh / 4)) >= bh * n);
                }
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert_eq!(apply(0, 10, 32, Dtype::F32, NUM_SMS), Err(LaunchError::Empty("B·H")));
        assert_eq!(query_parallel(1, 0, 32), Err(LaunchError::Empty("rows")));
        assert_eq!(outer(1, 10, 16, NUM_SMS), Err(LaunchError::UnsupportedHeadDim(16)));
        let too_large = |r| matches!(r, Err(LaunchError::TooLarge { .. }));
        assert!(too_large(apply(70_000, 10, 32, Dtype::F32, NUM_SMS)));
        assert!(too_large(apply(2, 1 << 31, 32, Dtype::Bf16, NUM_SMS)));
        assert!(matches!(cast(0), Err(LaunchError::Empty(_))));
        assert_eq!(cast(1000).unwrap().grid, [4, 1, 1]);
    }
}
