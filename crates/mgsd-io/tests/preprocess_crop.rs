//! Crop records: crop → uncrop is the identity on the cropped region (padding included),
//! composed records equal the steps applied one after the other, and both agree with a naive
//! voxel-by-voxel reference.

use mgsd_io::preprocess::{centre_crop, pad_to_patch, random_crop, CropRecord};
use proptest::prelude::*;
use rand::SeedableRng;

fn shape() -> impl Strategy<Value = [usize; 3]> {
    [1usize..9, 1usize..9, 1usize..9]
}

fn offset() -> impl Strategy<Value = [isize; 3]> {
    [-5isize..10, -5isize..10, -5isize..10]
}

fn data(shape: [usize; 3], channels: usize, seed: u64) -> Vec<u16> {
    let n = channels * shape.iter().product::<usize>();
    (0..n as u64)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) % 65521) as u16 + 1)
        .collect()
}

/// Output voxel `p` of channel `c` shows original voxel `p + offset` if it exists, else 0.
fn naive_crop(
    x: &[u16],
    channels: usize,
    orig: [usize; 3],
    off: [isize; 3],
    out: [usize; 3],
) -> Vec<u16> {
    let mut y = Vec::new();
    for c in 0..channels {
        for i in 0..out[0] {
            for j in 0..out[1] {
                for k in 0..out[2] {
                    let s = [i as isize + off[0], j as isize + off[1], k as isize + off[2]];
                    let inside = (0..3).all(|a| s[a] >= 0 && (s[a] as usize) < orig[a]);
                    y.push(if inside {
                        let n = orig.iter().product::<usize>();
                        x[c * n
                            + ((s[0] as usize) * orig[1] + s[1] as usize) * orig[2]
                            + s[2] as usize]
                    } else {
                        0
                    });
                }
            }
        }
    }
    y
}

proptest! {
    #[test]
    fn crop_matches_naive_and_uncrop_restores_the_window(
        orig in shape(), off in offset(), out in shape(), channels in 1usize..4, seed in any::<u64>()
    ) {
        let x = data(orig, channels, seed);
        let r = CropRecord::new(orig, off, out).unwrap();
        let y = r.crop(&x, channels).unwrap();
        prop_assert_eq!(&y, &naive_crop(&x, channels, orig, off, out));
        let back = r.uncrop(&y, channels).unwrap();
        let (lo, hi) = r.valid_box();
        let n = orig.iter().product::<usize>();
        for c in 0..channels {
            for i in 0..orig[0] {
                for j in 0..orig[1] {
                    for k in 0..orig[2] {
                        let v = c * n + (i * orig[1] + j) * orig[2] + k;
                        let inside = [i, j, k].iter().enumerate().all(|(a, &p)| lo[a] <= p && p < hi[a]);
                        prop_assert_eq!(back[v], if inside { x[v] } else { 0 });
                    }
                }
            }
        }
        // And cropping the restored grid gives the crop again: nothing lost, nothing added.
        prop_assert_eq!(r.crop(&back, channels).unwrap(), y);
    }

    #[test]
    fn composed_records_equal_the_steps(
        orig in shape(), off1 in offset(), mid in shape(), off2 in offset(), out in shape(), seed in any::<u64>()
    ) {
        let a = CropRecord::new(orig, off1, mid).unwrap();
        let b = CropRecord::new(mid, off2, out).unwrap();
        let ab = a.then(&b).unwrap();
        prop_assert_eq!(ab.original_shape(), orig);
        prop_assert_eq!(ab.shape(), out);
        let x = data(orig, 2, seed);
        let stepwise = b.crop(&a.crop(&x, 2).unwrap(), 2).unwrap();
        prop_assert_eq!(ab.crop(&x, 2).unwrap(), stepwise);
        let y = data(out, 2, seed ^ 1);
        let back_stepwise = a.uncrop(&b.uncrop(&y, 2).unwrap(), 2).unwrap();
        prop_assert_eq!(ab.uncrop(&y, 2).unwrap(), back_stepwise);
        // Probabilities (f32) go back the same way as labels.
        let p: Vec<f32> = y.iter().map(|&v| f32::from(v) / 7.0).collect();
        let pb = ab.uncrop(&p, 2).unwrap();
        let yb = ab.uncrop(&y, 2).unwrap();
        prop_assert!(pb.iter().zip(&yb).all(|(&p, &y)| p == f32::from(y) / 7.0));
    }

    #[test]
    fn random_windows_have_the_patch_shape_and_replay(
        orig in shape(), patch in shape(), seed in any::<u64>()
    ) {
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let a = random_crop(&mut r1, orig, patch).unwrap();
        let b = random_crop(&mut r2, orig, patch).unwrap();
        prop_assert_eq!(a, b);
        prop_assert_eq!(a.shape(), patch);
        // The window covers as much of the grid as it can on every axis.
        let (lo, hi) = a.valid_box();
        for ax in 0..3 {
            prop_assert_eq!(hi[ax] - lo[ax], orig[ax].min(patch[ax]));
        }
        let c = centre_crop(orig, patch).unwrap();
        prop_assert_eq!(c.shape(), patch);
        let p = pad_to_patch(orig, patch).unwrap();
        let (lo, hi) = p.valid_box();
        prop_assert_eq!((lo, hi), ([0; 3], orig));
    }
}

#[test]
fn brats_centre_crop_round_trip() {
    let orig = [240, 240, 155];
    let r = centre_crop(orig, [160, 192, 128]).unwrap();
    assert_eq!(r.offset(), [40, 24, 13]);
    let labels: Vec<u8> = (0..orig.iter().product::<usize>()).map(|i| (i % 5) as u8).collect();
    let back = r.uncrop(&r.crop(&labels, 1).unwrap(), 1).unwrap();
    let inside = |i: usize, j: usize, k: usize| {
        (40..200).contains(&i) && (24..216).contains(&j) && (13..141).contains(&k)
    };
    for (v, (&b, &l)) in back.iter().zip(&labels).enumerate() {
        let (i, j, k) = (v / (240 * 155), (v / 155) % 240, v % 155);
        assert_eq!(b, if inside(i, j, k) { l } else { 0 });
    }
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    assert!(CropRecord::new([0, 1, 1], [0; 3], [1, 1, 1]).is_err());
    assert!(CropRecord::new([1, 1, 1], [isize::MIN, 0, 0], [1, 1, 1]).is_err());
    assert!(CropRecord::new([1 << 40, 1 << 40, 1 << 40], [0; 3], [1, 1, 1]).is_err());
    assert!(centre_crop([10, 10, 10], [0, 4, 4]).is_err());
    let r = CropRecord::identity([2, 2, 2]).unwrap();
    assert!(r.crop(&[0u8; 3], 1).is_err());
    assert!(r.uncrop(&[0u8; 8], 0).is_err());
    let other = CropRecord::identity([3, 2, 2]).unwrap();
    assert!(r.then(&other).is_err());
}
