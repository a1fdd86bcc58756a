//! Synthetic cases: determinism, label set, zero background, and contrasts that make the
//! missing-modality problem real (enhancing tumour visible only on T1ce).

use mgsd_io::labels::{EDEMA, ENHANCING, NCR_NET};
use mgsd_io::synth::{Grade, SynthConfig, Synthesizer, TumourConfig};
use mgsd_io::{Case, Modality};

fn case(seed: u64, shape: [usize; 3]) -> Case {
    Synthesizer::new(SynthConfig::new(seed, shape)).unwrap().generate("c").unwrap()
}

fn mean_where(x: &[f32], labels: &[u8], l: u8) -> (f64, usize) {
    let (s, n) = x
        .iter()
        .zip(labels)
        .filter(|(_, &m)| m == l)
        .fold((0.0, 0), |(s, n), (&v, _)| (s + f64::from(v), n + 1));
    (s / n.max(1) as f64, n)
}

fn std_where(x: &[f32], labels: &[u8], l: u8) -> f64 {
    let (m, n) = mean_where(x, labels, l);
    let ss: f64 = x
        .iter()
        .zip(labels)
        .filter(|(_, &v)| v == l)
        .map(|(&v, _)| (f64::from(v) - m).powi(2))
        .sum();
    (ss / n.max(1) as f64).sqrt()
}

#[test]
fn same_seed_same_bytes_different_seed_differs() {
    let a = case(11, [40, 36, 32]);
    let b = case(11, [40, 36, 32]);
    assert_eq!(a, b);
    let c = case(12, [40, 36, 32]);
    for m in Modality::ALL {
        assert_ne!(a.images[&m].data, c.images[&m].data, "{m}");
    }
    assert_ne!(a.label, c.label);
}

#[test]
fn labels_are_canonical_and_background_is_exactly_zero() {
    for seed in 0..4 {
        let c = case(seed, [48, 48, 32]);
        let labels = c.label.as_ref().unwrap();
        assert!(labels.iter().all(|l| [0, NCR_NET, EDEMA, ENHANCING].contains(l)));
        for l in [NCR_NET, EDEMA, ENHANCING] {
            assert!(labels.contains(&l), "seed {seed}: label {l} missing");
        }
        let brain: Vec<bool> = c.images[&Modality::T1].data.iter().map(|&v| v != 0.0).collect();
        assert!(!brain[0], "corner voxel must be background");
        for m in Modality::ALL {
            let x = &c.images[&m].data;
            // Every modality has the same non-zero mask, with int16-like positive values.
            assert!(x.iter().zip(&brain).all(|(&v, &b)| (v != 0.0) == b), "{m}");
            assert!(x.iter().all(|&v| v.fract() == 0.0 && (0.0..=32767.0).contains(&v)), "{m}");
        }
        // The tumour lies inside the brain.
        assert!(labels.iter().zip(&brain).all(|(&l, &b)| l == 0 || b));
    }
}

#[test]
fn enhancing_tumour_is_visible_only_on_t1ce() {
    for seed in [3, 4, 5] {
        let c = case(seed, [64, 64, 48]);
        let labels = c.label.as_ref().unwrap();
        let x = |m: Modality| &c.images[&m].data;
        let (et_t1ce, n_et) = mean_where(x(Modality::T1ce), labels, ENHANCING);
        let (ed_t1ce, n_ed) = mean_where(x(Modality::T1ce), labels, EDEMA);
        let (wm_like, _) = mean_where(x(Modality::T1ce), labels, 0);
        assert!(n_et > 20 && n_ed > 20, "seed {seed}: too few ET ({n_et}) or ED ({n_ed}) voxels");
        // Bright on T1ce: well above the surrounding oedema and the healthy brain.
        let sd = std_where(x(Modality::T1ce), labels, EDEMA);
        assert!(
            et_t1ce > ed_t1ce + 3.0 * sd,
            "seed {seed}: T1ce ET {et_t1ce} vs ED {ed_t1ce} (sd {sd})"
        );
        assert!(et_t1ce > 1.4 * wm_like);
        // Not distinguishable from oedema on FLAIR, T2 or T1 alone.
        for m in [Modality::Flair, Modality::T2, Modality::T1] {
            let (et, _) = mean_where(x(m), labels, ENHANCING);
            let (ed, _) = mean_where(x(m), labels, EDEMA);
            let sd = std_where(x(m), labels, EDEMA);
            assert!((et - ed).abs() < 0.5 * sd, "seed {seed}, {m}: ET {et} vs ED {ed} (sd {sd})");
        }
        // Oedema is bright on FLAIR and T2; necrosis dark on T1ce and bright on T2.
        let (ed_flair, _) = mean_where(x(Modality::Flair), labels, EDEMA);
        let (bg_flair, _) = mean_where(x(Modality::Flair), labels, 0);
        assert!(ed_flair > 1.4 * bg_flair);
        let (ncr_t1ce, _) = mean_where(x(Modality::T1ce), labels, NCR_NET);
        let (ncr_t2, _) = mean_where(x(Modality::T2), labels, NCR_NET);
        let (ed_t2, _) = mean_where(x(Modality::T2), labels, EDEMA);
        assert!(ncr_t1ce < 0.7 * ed_t1ce && ncr_t2 > ed_t2);
    }
}

#[test]
fn low_grade_cases_have_no_enhancing_tumour() {
    let synth = Synthesizer::new(SynthConfig::new(2, [40, 40, 32])).unwrap();
    let c = synth.generate_with("lgg", 9, Grade::Lgg).unwrap();
    let labels = c.label.unwrap();
    assert!(!labels.contains(&ENHANCING));
    assert!(labels.contains(&NCR_NET) && labels.contains(&EDEMA));
}

#[test]
fn no_tumour_and_no_noise_are_allowed() {
    let mut cfg = SynthConfig::new(1, [16, 16, 12]);
    cfg.tumour.count = (0, 0);
    cfg.noise = 0.0;
    cfg.bias_field = 0.0;
    let c = Synthesizer::new(cfg).unwrap().generate("healthy").unwrap();
    assert!(c.label.unwrap().iter().all(|&l| l == 0));
}

#[test]
fn invalid_configurations_are_errors() {
    let ok = SynthConfig::new(0, [16, 16, 16]);
    let bad = [
        SynthConfig { shape: [0, 16, 16], ..ok.clone() },
        SynthConfig { shape: [16, 16, 5000], ..ok.clone() },
        SynthConfig { noise: f32::NAN, ..ok.clone() },
        SynthConfig { bias_field: -1.0, ..ok.clone() },
        SynthConfig { gain: (2.0, 1.0), ..ok.clone() },
        SynthConfig { tumour: TumourConfig { count: (3, 1), ..ok.tumour }, ..ok.clone() },
        SynthConfig {
            tumour: TumourConfig { core_fraction: (0.5, 1.5), ..ok.tumour },
            ..ok.clone()
        },
    ];
    for cfg in bad {
        assert!(Synthesizer::new(cfg.clone()).is_err(), "{cfg:?}");
    }
}

#[test]
fn patchy_enhancement_changes_only_et_and_hides_it_outside_t1ce() {
    let shape = [48, 48, 48];
    let mut total_et = (0usize, 0usize);
    for seed in 0..4 {
        let plain = SynthConfig::new(seed, shape);
        let mut patchy = plain.clone();
        patchy.tumour.patchy_enhancement = Some(1.0);
        let a = Synthesizer::new(plain).unwrap().generate("c").unwrap();
        let b = Synthesizer::new(patchy).unwrap().generate("c").unwrap();
        let (la, lb) = (a.label.as_ref().unwrap(), b.label.as_ref().unwrap());
        for (&x, &y) in la.iter().zip(lb) {
            // Same lesions: WT and TC unchanged; only enhancing voxels may become label 1.
            assert_eq!(x == 0, y == 0);
            assert_eq!(x == EDEMA, y == EDEMA);
            assert!(x == y || (x == ENHANCING && y == NCR_NET));
        }
        let et = |l: &[u8]| l.iter().filter(|&&v| v == ENHANCING).count();
        total_et.0 += et(la);
        total_et.1 += et(lb);
        // The non-enhancing rim is the old rim's intensity on T1, T2 and FLAIR (oedema-like)
        // and oedema-like on T1ce too; the enhancing voxels keep their T1ce brightness.
        let off: Vec<u8> = la
            .iter()
            .zip(lb)
            .map(|(&x, &y)| if x == ENHANCING && y == NCR_NET { 9 } else { 0 })
            .collect();
        if off.contains(&9) {
            for m in [Modality::T1, Modality::T2, Modality::Flair] {
                let (x, y) = (&a.images[&m].data, &b.images[&m].data);
                let (mx, my) = (mean_where(x, &off, 9).0, mean_where(y, &off, 9).0);
                assert!((mx - my).abs() < 1.0, "{m}: {mx} vs {my}");
            }
            let t1ce = &b.images[&Modality::T1ce].data;
            let (ne, _) = mean_where(t1ce, &off, 9);
            let (enh, _) = mean_where(t1ce, lb, ENHANCING);
            let (ed, _) = mean_where(t1ce, lb, EDEMA);
            assert!(ne < 0.7 * enh && (ne - ed).abs() < 0.25 * ed, "{ne} {enh} {ed}");
        }
    }
    assert!(total_et.1 < total_et.0 && total_et.1 > 0, "{total_et:?}");
    let mut bad = SynthConfig::new(0, shape);
    bad.tumour.patchy_enhancement = Some(f32::NAN);
    assert!(Synthesizer::new(bad).is_err());
}
