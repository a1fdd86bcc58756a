//! Invariants of the objective that PyTorch cannot check for us: the teacher stays frozen, the
//! discriminator and the student see disjoint gradients, the missing path really zeroes the
//! missing inputs, every trainable variable learns, degenerate masks cannot reach the loss.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use mgsd_distill::{
    term_gradients, MaskSampler, MaskSampling, MgsdConfig, MgsdObjective, ModalityAttention,
    ModalityMask,
};

/// Token grid 2 × 2 × 1: with a 1 × 1 × 1 grid the extractor's GroupNorms normalise single
/// values and cut every gradient below them.
const PATCH: [usize; 3] = [64, 64, 32];

fn setup(seed: u64) -> (MgsdObjective, Tensor, Tensor) {
    setup_with(seed, ModalityAttention::Reference)
}

fn setup_with(seed: u64, attention: ModalityAttention) -> (MgsdObjective, Tensor, Tensor) {
    let dev = Device::Cpu;
    let cfg = MgsdConfig { width: 8, seed, modality_attention: attention, ..MgsdConfig::default() };
    let obj = MgsdObjective::new(cfg, &dev, true).unwrap();
    let [d, h, w] = PATCH;
    let x = Tensor::rand(0f32, 1.0, (1, 4, d, h, w), &dev).unwrap();
    let y = Tensor::rand(0f32, 1.0, (1, 3, d, h, w), &dev)
        .unwrap()
        .ge(0.7)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (obj, x, y)
}

fn vars(vm: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<_> =
        vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn teacher_is_frozen_and_moves_only_by_ema() {
    let (mut obj, x, y) = setup(1);
    let r = ModalityMask::new([1.0, 0.0, 0.0, 1.0]).unwrap();
    let before: Vec<(String, Vec<f32>)> =
        obj.ema().tensors().iter().map(|(k, t)| (k.clone(), values(t))).collect();
    let terms = obj.step_losses(&x, &y, &r, true).unwrap();
    let grads = terms.total.backward().unwrap();
    for (k, t) in obj.ema().tensors() {
        assert!(!t.is_variable(), "teacher tensor {k} is a Var");
        assert!(grads.get(t).is_none(), "teacher tensor {k} received a gradient");
    }
    // The segmenter's optimiser step changes the student, not the teacher.
    let student = obj.student_vars().all_vars();
    let mut opt = AdamW::new(student, ParamsAdamW { lr: 1e-2, ..ParamsAdamW::default() }).unwrap();
    let w0 = values(obj.student_vars().data().lock().unwrap()["unet.conv1a.weight"].as_tensor());
    opt.step(&grads).unwrap();
    let w1 = values(obj.student_vars().data().lock().unwrap()["unet.conv1a.weight"].as_tensor());
    assert_ne!(w0, w1, "the student did not move");
    for (k, v) in &before {
        assert_eq!(
            &values(&obj.ema().tensors()[k]),
            v,
            "teacher tensor {k} changed by the optimiser"
        );
    }
    // The EMA update: t ← α·t + (1−α)·s, α(3) = 0.75.
    let a = obj.update_teacher(3).unwrap();
    assert_eq!(a, 0.75);
    let t1 = values(&obj.ema().tensors()["conv1a.weight"]);
    let t0 = &before.iter().find(|(k, _)| k == "conv1a.weight").unwrap().1;
    for ((n, o), s) in t1.iter().zip(t0).zip(&w1) {
        assert!((n - (0.75 * o + 0.25 * s)).abs() < 1e-6);
    }
    // The rebuilt teacher network computes with the new tensors.
    let out_t = obj.teacher().forward(&x).unwrap().out;
    assert_eq!(out_t.dims(), [1, 3, 64, 64, 32]);
}

#[test]
fn student_and_discriminator_gradients_are_disjoint() {
    let (obj, x, y) = setup(2);
    let r = ModalityMask::new([0.0, 1.0, 1.0, 0.0]).unwrap();
    let terms = obj.step_losses(&x, &y, &r, false).unwrap();
    assert!(terms.adv_gen.is_some());
    let g_total = terms.total.backward().unwrap();
    let d_loss = obj.discriminator_loss(&terms).unwrap().unwrap();
    let g_d = d_loss.backward().unwrap();
    let d_vars = vars(obj.discriminator_vars().unwrap());
    assert_eq!(d_vars.len(), 8);
    for (k, v) in &d_vars {
        assert!(g_total.get(v.as_tensor()).is_none(), "generator loss reached D's {k}");
        let g = g_d.get(v.as_tensor()).unwrap_or_else(|| panic!("D's {k} got no gradient"));
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
    for (k, v) in vars(obj.student_vars()) {
        assert!(g_d.get(v.as_tensor()).is_none(), "discriminator loss reached the student's {k}");
    }
    // …but the generator term does reach the student through the frozen D.
    let g_adv = terms.adv_gen.as_ref().unwrap().backward().unwrap();
    let up1 = &obj.student_vars().data().lock().unwrap()["unet.up1conv.weight"].clone();
    assert!(g_adv.get(up1.as_tensor()).is_some());
}

/// Parameters whose gradient is zero by construction, in the reference too: the never-applied
/// feed-forward `layers.0.1` and `extra_fea.gn2`; biases added equally to both sides of a
/// difference (`cat_conv.net.bias` in `mse(P(f), P(m))`, `to_out.0.bias` of the two mutual-aware
/// modules in `mse(E(a, b), E(b, a))`); and, at width 8, conv biases directly followed by a
/// GroupNorm with one channel per group, which removes them.
fn zero_by_construction(name: &str) -> bool {
    name.contains(".layers.0.1.")
        || name.starts_with("MMD.extra_fea.gn2.")
        || name.ends_with("cat_conv.net.bias")
        || (name.contains("_encode.") && name.ends_with("to_out.0.bias"))
        || [
            "MMD.extra_fea.conv1.bias",
            "MMD.extra_fea.conv3.bias",
            "unet.conv1b.conv1.bias",
            "unet.up2convb.conv1.bias",
        ]
        .contains(&name)
}

#[test]
fn every_trainable_variable_gets_a_gradient() {
    every_variable_learns(ModalityAttention::Reference);
}

/// The `prenorm` modality level applies the feed-forward `layers.0.1` and three LayerNorms:
/// every one of their parameters must learn too (candle-nn's fused LayerNorm would cut them).
#[test]
fn every_trainable_variable_gets_a_gradient_with_prenorm() {
    every_variable_learns(ModalityAttention::Prenorm);
}

fn every_variable_learns(attention: ModalityAttention) {
    let (obj, x, y) = setup_with(3, attention);
    let r = ModalityMask::new([1.0, 1.0, 0.0, 0.0]).unwrap();
    let terms = obj.step_losses(&x, &y, &r, true).unwrap();
    let grads = terms.total.backward().unwrap();
    let (mut checked, mut feed_forward) = (0, 0);
    let mut failures = Vec::new();
    let prenorm = attention == ModalityAttention::Prenorm;
    for (k, v) in vars(obj.student_vars()) {
        let g = grads
            .get(v.as_tensor())
            .map(|g| g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap());
        let never_applied =
            (!prenorm && k.contains(".layers.0.1.")) || k.starts_with("MMD.extra_fea.gn2.");
        // With prenorm, the last bias of the mutual-aware modules' feed-forward is added to both
        // sides of `mse(E(a, b), E(b, a))`.
        let cancelled = if prenorm {
            (k.contains("_encode.") && k.ends_with("fn.net.3.bias"))
                || (zero_by_construction(&k) && !k.contains(".layers.0.1."))
        } else {
            zero_by_construction(&k)
        };
        if never_applied {
            // Never applied: no gradient at all.
            if g.unwrap_or(0.0) != 0.0 {
                failures.push(format!("{k}: unused, got {g:?}"));
            }
        } else if cancelled {
            // Cancelled analytically, f32 rounding left (PyTorch f32: up to 1.5e-4 for
            // `extra_fea.conv1.bias`, f64: 1e-12): nothing to assert.
        } else {
            match g {
                Some(g) if g > 0.0 && g.is_finite() => {
                    checked += 1;
                    feed_forward += usize::from(k.contains(".layers.0.1."));
                }
                _ => failures.push(format!("{k}: gradient {g:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked > 100, "{checked}");
    // 3 decoders × 6 feed-forward parameters, less the two cancelled biases.
    assert_eq!(feed_forward, if prenorm { 16 } else { 0 });
}

/// `term_gradients` reports every term; the discriminator only by its own loss, the modality
/// level's parameters only by the modality term (and the total).
#[test]
fn term_gradients_split_the_parameters_as_the_objective_does() {
    let (obj, x, y) = setup_with(6, ModalityAttention::Prenorm);
    let r = ModalityMask::new([0.0, 1.0, 1.0, 0.0]).unwrap();
    let terms = obj.step_losses(&x, &y, &r, false).unwrap();
    let tg = term_gradients(&obj, &terms).unwrap();
    for t in ["sup_full", "sup_miss", "image", "feature", "modality", "adv_gen", "total", "disc"] {
        assert!(tg.norms.contains_key(t) && tg.values[t].is_finite(), "{t}: {tg:?}");
    }
    let n = |t: &str, g: &str| tg.norms[t][g];
    assert!(n("disc", "discriminator") > 0.0 && n("disc", "unet") == 0.0);
    assert!(n("adv_gen", "discriminator") == 0.0 && n("adv_gen", "unet") > 0.0);
    assert!(n("modality", "mmd_attention") > 0.0 && n("modality", "mmd_feed_forward") > 0.0);
    assert!(n("sup_miss", "mmd_attention") == 0.0 && n("feature", "mutiaxis") > 0.0);
    assert!(n("modality", "unet") > 0.0 && n("modality", "mutiaxis") == 0.0);
    assert_eq!(tg.weights["modality"], 150.0);
}

#[test]
fn missing_path_zeroes_the_missing_inputs() {
    let (obj, x, y) = setup(4);
    let r = ModalityMask::new([0.0, 1.0, 0.0, 1.0]).unwrap();
    let t0 = obj.step_losses(&x, &y, &r, false).unwrap();
    // Scribble over the missing modalities (T1, FLAIR): the missing path must not notice.
    let noise = Tensor::rand(5f32, 9.0, x.shape(), x.device()).unwrap();
    let keep =
        Tensor::new(&[0f32, 1.0, 0.0, 1.0], x.device()).unwrap().reshape((1, 4, 1, 1, 1)).unwrap();
    let x2 = (x.broadcast_mul(&keep).unwrap()
        + noise.broadcast_mul(&(1.0 - &keep).unwrap()).unwrap())
    .unwrap();
    let t1 = obj.step_losses(&x2, &y, &r, false).unwrap();
    assert_eq!(values(&t0.out_m), values(&t1.out_m));
    assert_ne!(values(&t0.out_f), values(&t1.out_f));
    // And it is exactly unet(x · r).
    let direct = obj.model().unet.forward(&(x.broadcast_mul(&keep).unwrap())).unwrap().out;
    assert_eq!(values(&direct), values(&t0.out_m));
    let v0 = t0.values().unwrap();
    let v1 = t1.values().unwrap();
    assert_eq!(v0["sup_miss"], v1["sup_miss"]);
}

#[test]
fn degenerate_masks_never_reach_the_objective() {
    assert!(ModalityMask::new([0.0; 4]).is_err());
    for mode in [MaskSampling::Reference, MaskSampling::UniformSubsets] {
        let mut s = MaskSampler::new(mode, 11);
        assert!((0..5000).all(|_| s.draw().count_present() >= 1));
    }
    // The full mask (uniform sampler) gives a finite modality term: the empty missing group
    // counts 0, not the reference's 0/0.
    let (obj, x, y) = setup(5);
    let v = obj.step_losses(&x, &y, &ModalityMask::FULL, false).unwrap().values().unwrap();
    assert!(v["modality"].is_finite() && v["modality"] == 0.0, "{v:?}");
    assert!(v.values().all(|t| t.is_finite()));
    // Wrong shapes are errors, not panics.
    let bad_y = Tensor::zeros((1, 2, 64, 64, 32), DType::F32, x.device()).unwrap();
    assert!(obj.step_losses(&x, &bad_y, &ModalityMask::FULL, false).is_err());
    let bad_x = Tensor::zeros((1, 4, 20, 32, 32), DType::F32, x.device()).unwrap();
    let y20 = Tensor::zeros((1, 3, 20, 32, 32), DType::F32, x.device()).unwrap();
    assert!(obj.step_losses(&bad_x, &y20, &ModalityMask::FULL, false).is_err());
}
