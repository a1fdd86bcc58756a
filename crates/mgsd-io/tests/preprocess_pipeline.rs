//! Normalisation statistics, flips, augmentation replay and the two protocol pipelines.

use mgsd_io::preprocess::{
    min_max_params, nonzero_mask, z_score_params, BoundingBox, CaseView, Channels, Flips,
    IntensityAugment, Normalization, Pipeline, Protocol,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A "brain": a box of non-zero values (positive, like MRI) in a zero background.
fn brain_volume(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = vec![0.0f32; shape.iter().product()];
    for i in lo[0]..hi[0] {
        for j in lo[1]..hi[1] {
            for k in lo[2]..hi[2] {
                x[(i * shape[1] + j) * shape[2] + k] =
                    1.0 + rand::RngExt::random_range(&mut rng, 0.0f32..3000.0);
            }
        }
    }
    x
}

fn brain_box() -> impl Strategy<Value = ([usize; 3], [usize; 3], [usize; 3])> {
    ([3usize..12, 3usize..12, 3usize..12]).prop_flat_map(|shape| {
        let lo = [0..shape[0] - 1, 0..shape[1] - 1, 0..shape[2] - 1];
        (Just(shape), lo).prop_flat_map(|(shape, lo)| {
            let hi = [lo[0] + 1..=shape[0], lo[1] + 1..=shape[1], lo[2] + 1..=shape[2]];
            (Just(shape), Just(lo), hi)
        })
    })
}

proptest! {
    #[test]
    fn min_max_spans_zero_to_one((shape, lo, hi) in brain_box(), seed in any::<u64>()) {
        let mut x = brain_volume(shape, lo, hi, seed);
        let mask: Vec<bool> = x.iter().map(|&v| v != 0.0).collect();
        let p = min_max_params(&x);
        p.apply(&mut x, None).unwrap();
        let (mn, mx) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let in_mask_max = x.iter().zip(&mask).filter(|(_, &m)| m).fold(f32::NEG_INFINITY, |a, (&v, _)| a.max(v));
        let brain_is_everything = mask.iter().all(|&m| m);
        if !brain_is_everything {
            prop_assert_eq!(mn, 0.0);
            prop_assert!((mx - 1.0).abs() < 1e-6);
            prop_assert!((in_mask_max - 1.0).abs() < 1e-6);
            // The background stays exactly 0.
            prop_assert!(x.iter().zip(&mask).all(|(&v, &m)| m || v == 0.0));
        }
        prop_assert!(x.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
    }

    #[test]
    fn z_score_is_standard_in_the_mask((shape, lo, hi) in brain_box(), seed in any::<u64>()) {
        let mut x = brain_volume(shape, lo, hi, seed);
        let mask = nonzero_mask(&[&x], shape).unwrap();
        let n = mask.iter().filter(|&&m| m).count() as f64;
        prop_assume!(n >= 8.0);
        let p = z_score_params(&x, &mask);
        let bb = BoundingBox::of_mask(&mask, shape).unwrap().unwrap();
        let q = mgsd_io::preprocess::z_score_params_in_box(&x, &mask, shape, &bb).unwrap();
        prop_assert!((p.offset - q.offset).abs() <= 1e-3 && (p.scale - q.scale).abs() <= 1e-6 * p.scale.abs().max(1.0));
        p.apply(&mut x, Some(&mask)).unwrap();
        let vals: Vec<f64> = x.iter().zip(&mask).filter(|(_, &m)| m).map(|(&v, _)| f64::from(v)).collect();
        let mean = vals.iter().sum::<f64>() / n;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        prop_assert!(mean.abs() < 1e-4, "mean {}", mean);
        prop_assert!((std - 1.0).abs() < 1e-4, "std {}", std);
        prop_assert!(x.iter().zip(&mask).all(|(&v, &m)| m || v == 0.0));
    }

    #[test]
    fn flips_are_involutions(shape in [1usize..7, 1usize..7, 1usize..7], axes in any::<[bool; 3]>(), c in 1usize..3) {
        let n = c * shape.iter().product::<usize>();
        let x: Vec<u32> = (0..n as u32).collect();
        let f = Flips { axes };
        let mut y = x.clone();
        f.apply(&mut y, c, shape).unwrap();
        if axes.iter().zip(shape).any(|(&a, s)| a && s > 1) {
            prop_assert_ne!(&y, &x);
        }
        f.apply(&mut y, c, shape).unwrap();
        prop_assert_eq!(y, x);
    }

    #[test]
    fn training_samples_replay(seed in any::<u64>(), protocol in prop_oneof![Just(Protocol::Acn), Just(Protocol::Rfnet)]) {
        let shape = [12, 10, 9];
        let chans: Vec<Vec<f32>> = (0..4).map(|c| brain_volume(shape, [2, 1, 1], [11, 9, 7], seed ^ c)).collect();
        let labels: Vec<u8> = chans[0].iter().map(|&v| if v > 2000.0 { 4 } else if v > 1000.0 { 2 } else { 0 }).collect();
        let view = CaseView::new(chans.iter().map(|c| Some(c.as_slice())).collect(), shape, Some(&labels)).unwrap();
        let pipe = Pipeline::new(protocol, [8, 8, 8]);
        let a = pipe.train(&view, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let b = pipe.train(&view, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(&a, &b);
        // draw and apply separately give the same sample.
        let analysis = pipe.analyse(&view).unwrap();
        let aug = pipe.draw(&mut ChaCha8Rng::seed_from_u64(seed), &analysis).unwrap();
        prop_assert_eq!(pipe.draw(&mut ChaCha8Rng::seed_from_u64(seed), &analysis).unwrap(), aug.clone());
        let c = pipe.apply(&view, &analysis, &aug).unwrap();
        prop_assert_eq!(&c, &a);
        prop_assert_eq!(a.image.dims(), [4, 8, 8, 8]);
        prop_assert_eq!(a.labels.as_ref().map(Vec::len), Some(512));
    }
}

/// A 24³ case whose only tumour is a 3³ cube (labels 2 around one voxel of 4) in a corner
/// region that a uniform 8³ window rarely reaches.
fn small_tumour_case() -> (Vec<Vec<f32>>, Vec<u8>, [usize; 3]) {
    let shape = [24, 24, 24];
    let chans: Vec<Vec<f32>> =
        (0..4).map(|c| brain_volume(shape, [1, 1, 1], [23, 23, 23], 7 + c)).collect();
    let mut labels = vec![0u8; 24 * 24 * 24];
    for x in 18..21 {
        for y in 2..5 {
            for z in 18..21 {
                labels[(x * 24 + y) * 24 + z] = 2;
            }
        }
    }
    labels[(19 * 24 + 3) * 24 + 19] = 4;
    (chans, labels, shape)
}

#[test]
fn foreground_oversampling_centres_windows_on_tumour_and_replays() {
    let (chans, labels, shape) = small_tumour_case();
    let view =
        CaseView::new(chans.iter().map(|c| Some(c.as_slice())).collect(), shape, Some(&labels))
            .unwrap();
    for protocol in [Protocol::Acn, Protocol::Rfnet] {
        let mut pipe = Pipeline::new(protocol, [8, 8, 8]);
        // Off (the default): exactly the windows drawn before the option existed.
        let plain = pipe.analyse(&view).unwrap();
        assert!(plain.foreground.is_empty());
        let windows = |pipe: &Pipeline, seed: u64| {
            let analysis = pipe.analyse(&view).unwrap();
            pipe.draw(&mut ChaCha8Rng::seed_from_u64(seed), &analysis).unwrap()
        };
        let off: Vec<_> = (0..50).map(|s| windows(&pipe, s)).collect();
        for (s, w) in off.iter().enumerate() {
            let crop = mgsd_io::preprocess::random_crop(
                &mut ChaCha8Rng::seed_from_u64(s as u64),
                plain.base.shape(),
                [8, 8, 8],
            )
            .unwrap();
            assert_eq!(w.crop, crop);
        }
        // Always centred: every patch holds tumour, and both classes are picked.
        pipe.foreground_fraction = 1.0;
        let (mut saw_et, mut saw_ed) = (false, false);
        for seed in 0..200 {
            let a = pipe.train(&view, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let b = pipe.train(&view, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            assert_eq!(a, b, "{protocol:?}: the same seed gives the same sample");
            let l = a.labels.unwrap();
            assert!(l.iter().any(|&v| v != 0), "{protocol:?}, seed {seed}: no tumour");
            saw_et |= l.contains(&4);
            saw_ed |= l.contains(&2);
        }
        assert!(saw_et && saw_ed);
        // A third of the patches: about a third more hold tumour than uniform windows do.
        pipe.foreground_fraction = 1.0 / 3.0;
        let holds = |pipe: &Pipeline| {
            (0..300)
                .filter(|&s| {
                    let a = pipe.train(&view, &mut ChaCha8Rng::seed_from_u64(s)).unwrap();
                    a.labels.unwrap().iter().any(|&v| v != 0)
                })
                .count()
        };
        let third = holds(&pipe);
        pipe.foreground_fraction = 0.0;
        let uniform = holds(&pipe);
        assert!(third > uniform + 50, "{protocol:?}: {third} vs {uniform} of 300");
        pipe.foreground_fraction = 1.5;
        assert!(pipe.draw(&mut ChaCha8Rng::seed_from_u64(0), &plain).is_err());
    }
}

#[test]
fn fused_pipeline_equals_normalise_then_crop() {
    let shape = [20, 18, 16];
    let chans: Vec<Vec<f32>> =
        (0..4).map(|c| brain_volume(shape, [3, 2, 4], [17, 15, 13], c)).collect();
    let view =
        CaseView::new(vec![Some(&chans[0]), None, Some(&chans[2]), Some(&chans[3])], shape, None)
            .unwrap();
    for (protocol, norm) in
        [(Protocol::Acn, Normalization::MinMax), (Protocol::Rfnet, Normalization::ZScoreInMask)]
    {
        let pipe = Pipeline::new(protocol, [8, 10, 12]);
        let s = pipe.eval(&view).unwrap();
        let present: Vec<&[f32]> = view.images.iter().flatten().copied().collect();
        let mask = nonzero_mask(&present, shape).unwrap();
        let mut full = Channels::zeros(4, shape);
        for (c, img) in view.images.iter().enumerate() {
            if let Some(img) = img {
                let p = mgsd_io::preprocess::norm_params(norm, img, Some(&mask)).unwrap();
                let ch = full.channel_mut(c);
                ch.copy_from_slice(img);
                p.apply(ch, Some(&mask)).unwrap();
            }
        }
        let expected = s.record.crop_channels(&full).unwrap();
        assert_eq!(s.image, expected, "{protocol:?}");
        assert!(s.image.channel(1).iter().all(|&v| v == 0.0), "absent modality must stay 0");
    }
}

#[test]
fn rfnet_crops_to_the_brain_and_predictions_go_back_exactly() {
    let shape = [30, 28, 20];
    let (lo, hi) = ([5, 3, 2], [25, 20, 17]);
    let chans: Vec<Vec<f32>> = (0..4).map(|c| brain_volume(shape, lo, hi, 40 + c)).collect();
    let labels: Vec<u8> = chans[1]
        .iter()
        .map(|&v| {
            if v > 2500.0 {
                1
            } else if v > 1500.0 {
                2
            } else {
                0
            }
        })
        .collect();
    let view =
        CaseView::new(chans.iter().map(|c| Some(c.as_slice())).collect(), shape, Some(&labels))
            .unwrap();
    let pipe = Pipeline::new(Protocol::Rfnet, [16, 16, 16]);
    let s = pipe.eval(&view).unwrap();
    // Brain box 20 × 17 × 15, padded to at least 16 on each axis.
    assert_eq!(s.image.shape, [20, 17, 16]);
    let mask = nonzero_mask(&[&chans[0]], shape).unwrap();
    assert_eq!(
        BoundingBox::of_mask(&mask, shape).unwrap(),
        Some(BoundingBox { start: lo, end: hi })
    );
    // The labels on the patch, put back, are the original labels everywhere.
    let back = s.record.uncrop(s.labels.as_ref().unwrap(), 1).unwrap();
    assert_eq!(back, labels);
    // The ACN window crops the brain: what comes back equals the labels inside the window.
    let acn = Pipeline::new(Protocol::Acn, [16, 16, 16]).eval(&view).unwrap();
    let back = acn.record.uncrop(acn.labels.as_ref().unwrap(), 1).unwrap();
    assert_eq!(acn.record.crop(&back, 1).unwrap(), *acn.labels.as_ref().unwrap());
}

#[test]
fn bad_inputs_are_errors() {
    let shape = [4, 4, 4];
    let x = vec![1.0f32; 64];
    assert!(CaseView::new(vec![None, None], shape, None).is_err());
    assert!(CaseView::new(vec![Some(&x[..10])], shape, None).is_err());
    assert!(CaseView::new(vec![Some(&x)], shape, Some(&[0u8; 3])).is_err());
    let view = CaseView::new(vec![Some(&x)], shape, None).unwrap();
    // The default order has four channels; this view has one.
    assert!(Pipeline::new(Protocol::Acn, [2, 2, 2]).eval(&view).is_err());
    let zero = vec![0.0f32; 64];
    let empty = CaseView::new(vec![Some(&zero); 4], shape, None).unwrap();
    assert!(Pipeline::new(Protocol::Rfnet, [2, 2, 2]).eval(&empty).is_err());
    let mut bad = Pipeline::new(Protocol::Acn, [2, 2, 2]);
    bad.flip_probability = 1.5;
    let four = CaseView::new(vec![Some(&x); 4], shape, None).unwrap();
    assert!(bad.train(&four, &mut ChaCha8Rng::seed_from_u64(0)).is_err());
    bad.flip_probability = 0.5;
    bad.intensity = Some(IntensityAugment { scale: (1.0, 0.5), shift: (0.0, 0.0) });
    assert!(bad.train(&four, &mut ChaCha8Rng::seed_from_u64(0)).is_err());
    bad.intensity = None;
    bad.patch = [0, 2, 2];
    assert!(bad.eval(&four).is_err());
}
